"""``edgekit.convert``: source -> export -> each precision -> verify -> manifest -> publish."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.calib import check_data_files, examples_like
from edgekit.errors import CalibrationError, EdgekitError, VerificationError
from edgekit.fsutil import publish, sha256_file, staging_dir, write_json_atomic
from edgekit.manifest import Manifest, Verification, library_versions, manifest_path
from edgekit.optimize import int8_prep
from edgekit.optimize.bits import NoLowBitWeights
from edgekit.optimize.bits import require as require_bits
from edgekit.types import ArtifactStatus, ExampleInputs, Format, ModelRef, Precision, ProgressFn

if TYPE_CHECKING:
    from edgekit.converters import Converter
    from edgekit.evaluate import Evaluator
    from edgekit.sources import ModelSource

VERIFY_SAMPLES = 32  # calibration samples re-used for parity, on top of the example inputs


@dataclass(frozen=True)
class Artifact:
    """One converted variant: where it is and how it measured up (or why it failed)."""

    path: Path
    format: Format
    precision: Precision
    status: ArtifactStatus
    reason: str | None = None
    size_bytes: int = 0
    seconds: float = 0.0  # the whole variant: its share of the export + build + verification
    verification: Verification | None = None
    route: str = ""
    seconds_parts: Mapping[str, float] = field(default_factory=dict)  # export_share, build, verify
    quantized_fraction: Mapping[str, float] = field(default_factory=dict)  # bit width -> share of weights

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", ArtifactStatus(self.status))  # "failed" from older callers too

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format.value, "precision": self.precision.value,
                "status": self.status.value, "reason": self.reason, "size_bytes": self.size_bytes,
                "seconds": round(self.seconds, 3),
                "seconds_parts": {k: round(v, 3) for k, v in self.seconds_parts.items()}, "route": self.route,
                "quantized_fraction": dict(self.quantized_fraction),
                "verification": self.verification.to_dict() if self.verification else None}


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"


def convert(
    model: ModelRef = None,
    example_inputs: ExampleInputs = None,
    *,
    targets: Sequence[str | Format] | str | None = None,
    precisions: Sequence[str | Precision] | str | None = None,
    out: str | Path = "edgekit-out",
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    name: str | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    weights: str | Path | None = None,
    seq_len: int | None = None,
    preprocess: Mapping[str, Any] | None = None,
    keep_going: bool = False,
    progress: ProgressFn | None = None,
) -> list[Artifact]:
    """Convert a model to each target format and precision, verifying every variant.

    ``model`` is an ``nn.Module`` (with ``example_inputs``), a Hugging Face directory, a ``.pt2``
    file, ``package.module:factory`` (with ``weights``) or ``builtin:NAME``; None means the
    built-in default. ``options`` maps a format name to its converter options. ``preprocess``
    records what ``Model.classify``/``embed`` need, for sources that carry no tokenizer or
    processor files (see docs/tasks.md): e.g. ``{"id2label": [...], "image": {"size": [32, 32]}}``.
    ``targets`` defaults to ONNX. Verification records accuracy on labelled ``eval_data``.
    Recipes (prune/distill stages gated on a task metric, another metric) go through
    ``edgekit.optimize.pipeline.run_recipe``.

    >>> arts = edgekit.convert(net, (x,), targets=["onnx"], precisions=["fp32", "int8-dynamic"])  # doctest: +SKIP
    >>> arts[0].verification.passed  # doctest: +SKIP
    True

    Raises the first error unless ``keep_going`` (then failed variants are rows with a reason);
    raises :class:`VerificationError` when an fp32 variant is out of tolerance.
    """
    from edgekit.sources import resolve_source

    check_data_files(calib=calib, eval_data=eval_data)  # a typo'd path fails before the model loads
    plan_converters(targets, precisions, options)  # bad targets or options fail before the model loads
    source = resolve_source(model, example_inputs, input_names=input_names, output_names=output_names,
                            dynamic_axes=dynamic_axes, weights=weights, seq_len=seq_len, progress=progress)
    return convert_source(source, targets=targets, precisions=precisions, out=out, calib=calib,
                          eval_data=eval_data, options=options, name=name, preprocess=preprocess,
                          keep_going=keep_going, progress=progress)


def plan_converters(targets: Sequence[str | Format] | str | None,
                     precisions: Sequence[str | Precision] | str | None,
                     options: Mapping[str, Any] | None) -> tuple[list[Converter], list[Precision] | None,
                                                                 dict[Format, Any]]:
    """The converters, the precisions asked for and each converter's parsed options; options are
    checked first (no heavy import), then each converter's packages. Callers run it before they
    load or train a model, so a misspelled option fails at once."""
    from edgekit.converters import CONVERTERS
    from edgekit.options import parse_options

    formats = Format.parse_list(targets or ("onnx",))
    wanted = Precision.parse_list(precisions) if precisions is not None else None
    converters = [CONVERTERS.get(f)() for f in formats]
    opts = {c.format: parse_options(c.Options, (options or {}).get(c.format.value)) for c in converters}
    for conv in converters:
        # several targets: each builds the subset it supports (the rest are listed as skipped); a
        # precision that no target supports is still an error (named by the first target's check)
        nowhere = [p for p in wanted or [] if not any(p in c.precisions for c in converters)]
        own = [p for p in wanted or [] if p in conv.precisions or len(converters) == 1]
        conv.check(nowhere or own or [Precision.FP32])
    return converters, wanted, opts


def convert_source(
    source: ModelSource,
    *,
    targets: Sequence[str | Format] | str | None = None,
    precisions: Sequence[str | Precision] | str | None = None,
    out: str | Path = "edgekit-out",
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    name: str | None = None,
    preprocess: Mapping[str, Any] | None = None,
    keep_going: bool = False,
    progress: ProgressFn | None = None,
    evaluator: str | Evaluator | None = None,
    record: Mapping[str, Any] | None = None,
) -> list[Artifact]:
    """:func:`convert` for a resolved ``source``: the lower-level entry of callers that hold one
    (``run_recipe``, ``edgekit.matrix``). ``evaluator`` picks the task metric verification records
    (a name, ``package.module:function`` or an :class:`~edgekit.evaluate.Evaluator`; default:
    accuracy on labelled data); ``record`` (a recipe and its stage report) is stored in every
    manifest under ``recipe``."""
    from edgekit.calib import load_calibration, load_eval
    from edgekit.converters import BuildContext
    from edgekit.options import options_dict

    converters, wanted, opts = plan_converters(targets, precisions, options)
    if preprocess:  # what the runtime's task pipelines need (labels, tokenizer, image spec)
        from edgekit.sources.module import with_preprocess

        source = with_preprocess(source, preprocess)
    calibration = load_calibration(calib, source) if calib is not None else source.calibration
    source = examples_like(source, calibration)  # an image model exports the data's size
    evaluation = load_eval(eval_data, source) if eval_data is not None else source.evaluation
    plan = {c.format: [p for p in wanted if p in c.precisions] if wanted else
            c.default_precisions(calibration is not None, source.task)
            for c in converters}
    for conv in converters:
        needing = [p.value for p in plan[conv.format] if conv.needs_calibration(p)]
        if needing and calibration is None:
            raise CalibrationError(f"{', '.join(needing)} on {conv.format.value} needs calibration data",
                                   fix="pass --calib data.npz (or a text file for a HF text model), "
                                   "or ask for int8-dynamic instead")

    from edgekit.verify import Reference

    feeds = [source.example_inputs]
    if calibration is not None:
        feeds += list(calibration.take(VERIFY_SAMPLES).batches(8))
    reference = Reference.build(source, feeds, evaluation, evaluator,
                                keep_outputs=any(c.reference_outputs for c in converters))
    out_dir = Path(out)
    base_name = _safe_name(name or source.name)
    artifacts: list[Artifact] = []
    with staging_dir(out_dir) as stage:
        assets = _stage_assets(source, stage, base_name)
        for conv in converters:
            work = stage / f"work-{conv.format.value}"
            work.mkdir()
            ctx = BuildContext(source, opts[conv.format], work, calibration, progress, evaluation)
            t0 = time.perf_counter()
            try:
                base = conv.export(ctx)
            except EdgekitError as e:
                if not keep_going:
                    raise
                artifacts += [_failed(out_dir, base_name, conv, p, e) for p in plan[conv.format]]
                continue
            export_s = time.perf_counter() - t0
            precisions_ = plan[conv.format]
            prepared: tuple[Any, Any, dict[str, Any]] | None = None  # static int8's own export (int8_prep)
            for i, precision in enumerate(precisions_):
                if progress:
                    progress(f"build {conv.format.value}", i, len(precisions_))
                try:
                    b, c, prep = base, ctx, None
                    if precision is Precision.INT8 and int8_prep.wanted(ctx.options):
                        prepared = prepared or int8_prep.prepared_base(conv, ctx)
                        b, c, prep = prepared[0] or base, prepared[1], prepared[2]
                    artifacts.append(_build_one(conv, b, precision, base_name, c, reference,
                                                out_dir, assets, export_s,
                                                options_dict(opts[conv.format]), record,
                                                export_share=export_s / len(precisions_), prep=prep))
                except EdgekitError as e:
                    skip = wanted is None and isinstance(e, NoLowBitWeights)  # a default int4 that would lie
                    if not keep_going and not skip:
                        raise
                    artifacts.append(_failed(out_dir, base_name, conv, precision, e,
                                             ArtifactStatus.SKIPPED if skip else ArtifactStatus.FAILED))
            if progress:
                progress(f"build {conv.format.value}", len(precisions_), len(precisions_))
            shutil.rmtree(work, ignore_errors=True)
            artifacts += [Artifact(out_dir / f"{base_name}-{p.value}{conv.suffix}", conv.format, p, ArtifactStatus.SKIPPED,
                                   f"{conv.format.value} does not support {p.value}")
                          for p in wanted or [] if p not in conv.precisions]
    diverged = [a for a in artifacts if a.status is ArtifactStatus.DIVERGED]
    if diverged:
        v = diverged[0].verification
        worst = next(o for o in v.outputs if o.name == v.failed_output) if v else None
        detail = (f"output {worst.name!r}: max abs error {worst.max_abs_err:.3g}, worst cosine "
                  f"{worst.min_cosine:.6f}") if worst else ""
        first = diverged[0]
        nan = worst is not None and worst.non_finite
        raise VerificationError(
            f"{first.path.name} does not match the original model: {first.reason} ({detail})",
            fix=("values past the precision's range (fp16 overflows above 65504) or a broken quantization "
                 "scale give NaN/inf: drop this precision or exclude the layer (edgekit sensitivity)" if nan else
                 "the exporter changed the model's numerics: check for training-mode layers, "
                 "random ops or unsupported dtypes") + "; the artifact and its report were kept for inspection",
            artifacts=artifacts)
    return artifacts


def _failed(out_dir: Path, base_name: str, conv: Any, precision: Precision, e: EdgekitError,
            status: ArtifactStatus = ArtifactStatus.FAILED) -> Artifact:
    return Artifact(out_dir / f"{base_name}-{precision.value}{conv.suffix}", conv.format, precision,
                    status, e.problem)


def _stage_assets(source: Any, stage: Path, base_name: str) -> dict[str, Any]:
    """Copy tokenizer/preprocessor files once per conversion into ``<name>.assets/``."""
    if not source.assets:
        return {}
    folder = stage / f"{base_name}.assets"
    folder.mkdir()
    files = []
    for f in source.assets:
        shutil.copy2(f, folder / f.name)
        files.append({"path": f"{folder.name}/{f.name}", "sha256": sha256_file(f), "bytes": f.stat().st_size})
    return {"dir": folder, "files": files}


def _build_one(conv: Any, base: Any, precision: Precision, base_name: str, ctx: Any,
               reference: Any, out_dir: Path, assets: dict[str, Any],
               export_s: float, options: dict[str, Any], record: Mapping[str, Any] | None = None,
               export_share: float = 0.0, prep: dict[str, Any] | None = None) -> Artifact:
    """Build, verify and publish one precision; its ``seconds`` count ``export_share`` (the
    format's export split over its precisions), the build, the verification and the manifest;
    ``prep`` is what :mod:`edgekit.optimize.int8_prep` did to the module first."""
    stem = f"{base_name}-{precision.value}"
    t0 = time.perf_counter()
    built = conv.build(base, precision, stem, ctx)
    seconds = time.perf_counter() - t0
    require_bits(precision.value, built.details.get("quantized_fraction") or {}, conv.format.value)  # int4 with no 4-bit weight
    t_verify = time.perf_counter()
    if ctx.progress:
        ctx.progress(f"verify {stem}", 0, 1)
    verification, native = _verify(conv, built, precision, ctx, reference)
    verify_s = time.perf_counter() - t_verify
    loop = None
    if precision is Precision.INT8 and hasattr(ctx.options, "int8_loop"):  # accuracy-aware static int8
        from edgekit.optimize.int8_loop import refine

        loop = refine(conv, base, stem, ctx, reference, built, verification,
                      lambda b: _verify(conv, b, precision, ctx, reference))
        built, verification, native = loop.built, loop.verification, loop.native or native
        built.details["accuracy_loop"] = loop.record
    if prep is not None:
        built.details["int8_prep"] = prep
    signature = native.with_examples(ctx.source.example_inputs)
    size = sum(f.stat().st_size for f in built.files)
    files = [{"path": f.name, "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in built.files]
    preprocess = dict(ctx.source.preprocess)
    if assets:
        preprocess["assets_dir"] = assets["dir"].name
    manifest = Manifest(
        artifact=built.model.name, format=conv.format, precision=precision, signature=signature,
        task=ctx.source.task, files=files + assets.get("files", []), size_bytes=size,
        source=ctx.source.describe(), options=options,
        conversion={"route": built.route, "export_seconds": round(export_s, 3),
                    "build_seconds": round(seconds, 3), "verify_seconds": round(verify_s, 3), **built.details},
        versions=library_versions(*conv.distributions), verification=verification,
        preprocess=preprocess, runtime_hints=dict(built.runtime_hints),
        recipe=dict(record) if record is not None else None)
    mpath = manifest_path(built.model)
    write_json_atomic(mpath, manifest.to_dict())
    if assets and assets["dir"].exists():  # the first variant published moves them out of staging
        publish([assets["dir"]], out_dir)
    final = publish([*built.files, mpath], out_dir)
    status = ArtifactStatus.DIVERGED if verification.gated and not verification.passed else ArtifactStatus.OK
    reason = None if status is ArtifactStatus.OK else _divergence(verification)
    if status is ArtifactStatus.OK and loop is not None and not loop.met:  # short of its int8 target
        status, reason = ArtifactStatus.DEGRADED, loop.reason
    return Artifact(final[-2], conv.format, precision, status, reason, size,
                    export_share + time.perf_counter() - t0, verification, built.route,
                    {"export_share": export_share, "build": seconds, "verify": verify_s},
                    dict(built.details.get("quantized_fraction") or {}))


def _verify(conv: Any, built: Any, precision: Precision, ctx: Any, reference: Any) -> tuple[Verification, Any]:
    """Run ``built`` on every reference feed (or the format's own check) and compare the outputs;
    returns the verification and the artifact's native signature."""
    from edgekit.isolation import run_isolated
    from edgekit.runtime import load
    from edgekit.verify import compare

    custom = conv.verify(built, precision, ctx, reference)  # a format's own check, or None
    if custom is not None:
        return custom
    feeds = reference.all_feeds
    if conv.verify_isolated:  # a clean process that has not imported the converter's stack
        got, native = run_isolated(built.model, feeds, device="cpu", **conv.verify_options)
    else:
        with load(built.model, device="cpu", **conv.verify_options) as m:
            got, native = [m.run(f) for f in feeds], m.signature
    return compare(reference, got, precision, device="cpu"), native


def _divergence(v: Verification) -> str:
    """Why a gated verification failed, in the words the table shows."""
    bad = next((o for o in v.outputs if o.name == v.failed_output), None)
    if bad is not None and bad.non_finite:
        return (f"output {bad.name!r} is NaN or infinite at {bad.non_finite} values where the original's "
                "are finite")
    return f"output {v.failed_output!r} out of tolerance"
