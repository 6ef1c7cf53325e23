"""Run a recipe: source -> prune -> distill -> (gate) -> convert and quantize -> (gate per artifact).

After every stage the recipe's metric is measured on the evaluation data and its drop from the
original model recorded; a stage whose drop exceeds its allowed drop stops the pipeline with a
:class:`~edgekit.errors.GateError` whose report names the stage, metric, drop and allowed drop,
or, with ``on_fail: step-back``, retries it with a milder setting (a lower sparsity, re-running
distillation; a milder precision for an artifact). The recipe and the stage report are stored in
the manifest of every artifact produced (``manifest.recipe``).

>>> result = run_recipe("recipe.yaml", "my_hf_dir", eval_data="eval.jsonl", out="out/")  # doctest: +SKIP
>>> [(s.stage, s.drop) for s in result.report.stages]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import CalibrationError, EdgekitError, GateError, RecipeError
from edgekit.optimize._pipeline_report import (  # noqa: F401 - REPORT_COLUMNS, report_rows: public here
    REPORT_COLUMNS,
    PipelineReport,
    StageReport,
    report_rows,
)
from edgekit.optimize.recipe import Recipe, check_names, load_recipe
from edgekit.types import ArtifactStatus, ExampleInputs, Format, ModelRef, Precision, ProgressFn

if TYPE_CHECKING:
    from edgekit.conversion import Artifact
    from edgekit.evaluate import Baseline, EvalData, Evaluator
    from edgekit.sources import ModelSource

CHECKPOINTS = ".edgekit-checkpoints"

# weakest -> mildest across formats (each converter supports a subset): a failed artifact steps
# back to the next precision after its own that its format supports and that was not built yet
MILDER: tuple[Precision, ...] = (
    Precision.INT4, Precision.Q4_0, Precision.Q4_K_M, Precision.Q5_K_M, Precision.Q6_K, Precision.INT8,
    Precision.Q8_0, Precision.INT8_DYNAMIC, Precision.INT8_WEIGHTS, Precision.FP16,
)


@dataclass
class PipelineResult:
    """The artifacts, the optimized source they were converted from, and the report."""

    artifacts: list[Artifact]
    report: PipelineReport
    source: ModelSource


def load_data(path: str | Path, source: ModelSource) -> EvalData:
    """Evaluation or training data with labels when the file has them (.npz ``labels``, JSONL
    ``"label"``), else inputs only (.npz, text, JSONL ``"text"``)."""
    from edgekit.calib import load_calibration, load_eval
    from edgekit.evaluate import EvalData

    path = Path(path)
    labelled = False
    if path.suffix == ".npz" and path.is_file():
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            labelled = any(k in z.files for k in ("labels", "label"))
    elif path.suffix in (".jsonl", ".json") and path.is_file():
        first = next((ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()), "")
        try:
            labelled = isinstance(obj := json.loads(first), dict) and "label" in obj
        except json.JSONDecodeError:
            labelled = False  # load_calibration names the bad line
    return EvalData.of(load_eval(path, source) if labelled else load_calibration(path, source))


class _Run:
    """State of one recipe run: the recipe, data, evaluator and the report being filled."""

    def __init__(self, recipe: Recipe, source: ModelSource, calibration: Any, data: EvalData | None,
                 evaluator: Evaluator | None, out: Path, progress: ProgressFn | None) -> None:
        self.recipe, self.original, self.calibration = recipe, source, calibration
        self.data, self.evaluator, self.out, self.progress = data, evaluator, out, progress
        self.report = PipelineReport(recipe, evaluator.name if evaluator else None,
                                     data.origin if data else None)
        self.baseline: Baseline | None = None

    def tell(self, task: str, done: int, total: int | None = None) -> None:
        if self.progress is not None:
            self.progress(task, done, total)

    def measure(self, stage: str, model: Any, max_drop: float | None, **kw: Any) -> StageReport:
        """Score ``model`` and judge it against ``max_drop``; add the row to the report."""
        row = StageReport(stage, max_drop=max_drop, **kw)
        if self.evaluator is not None and self.data is not None:
            self.tell(f"evaluate {stage}", 0, 1)
            row.metric = self.evaluator.evaluate(model, self.data, self.baseline)
            self.judge(row)
        self.report.stages.append(row)
        return row

    def judge(self, row: StageReport) -> None:
        ref = self.baseline.value if self.baseline is not None else None
        if row.metric is not None and ref is not None and self.evaluator is not None:
            row.drop = self.evaluator.drop(row.metric["value"], ref)
            row.passed = None if row.max_drop is None else row.drop <= row.max_drop + 1e-12

    def stop(self, row: StageReport, artifacts: list | None = None) -> GateError:
        self.report.status = "stopped"
        fix = ("loosen the allowed drop (max_drop), choose a milder setting, or set eval.on_fail: step-back"
               if self.recipe.eval.on_fail == "stop" else
               f"the milder settings tried ({row.attempt} attempts) failed too: loosen max_drop, list milder "
               "settings (prune.step_back), or distill on more data")
        return GateError(row.describe(), fix=fix, report=self.report.to_dict(), artifacts=artifacts)


def _gated(recipe: Recipe) -> bool:
    return any(recipe.max_drop(s) is not None for s in ("prune", "distill", "quantize"))


def _prepare(run: _Run, source: ModelSource) -> ModelSource:
    """The pruned (and distilled) source for this attempt, or raise a GateError on a failed gate."""
    recipe = run.recipe
    current = source
    prune, dist = recipe.prune, recipe.distill
    sparsities: list[float | None] = [prune.sparsity] if prune else [None]
    if prune and recipe.eval.on_fail == "step-back":
        sparsities += prune.milder()
    for attempt, sparsity in enumerate(sparsities, 1):
        current, failed = source, None
        if prune is not None and sparsity is not None:
            current, failed = _prune(run, source, sparsity, attempt)
        if failed is None and dist is not None:
            current, failed = _distill(run, source, current, attempt,
                                       {"student sparsity": sparsity} if sparsity is not None else {})
        if failed is None:
            return current
        if attempt == len(sparsities):
            raise run.stop(failed)
    return current


def _prune(run: _Run, source: ModelSource, sparsity: float, attempt: int) -> tuple[ModelSource, StageReport | None]:
    from edgekit.optimize.prune import prune_source

    p = run.recipe.prune
    assert p is not None  # noqa: S101 - _prepare only calls this with a prune section
    kwargs: dict[str, Any] = {"sparsity": sparsity, "method": p.method, "importance": p.importance,
                              "exclude": list(p.exclude)}
    if p.targets is not None:
        kwargs["targets"] = list(p.targets)
    if p.scope:
        kwargs["scope"] = p.scope
    if run.calibration is not None:
        kwargs["data"] = list(run.calibration.batches(8))
    run.tell(f"prune (sparsity {sparsity})", 0, 1)
    t0 = time.perf_counter()
    pruned, result = prune_source(source, **kwargs)
    # followed by distillation, the pruned model is only the student: gated after training, unless
    # the prune section sets its own allowed drop
    max_drop = p.max_drop if (p.max_drop is not None or run.recipe.distill) else run.recipe.eval.max_drop
    details = result.to_dict()
    details.pop("layers", None)  # per-layer rows stay in the prune report, not in every manifest
    row = run.measure("prune", pruned, max_drop, setting={"sparsity": sparsity}, attempt=attempt,
                      seconds=round(time.perf_counter() - t0, 3), details=details)
    return pruned, row if row.passed is False else None


def _student(run: _Run, source: ModelSource, current: ModelSource) -> ModelSource:
    """The student: a user-given architecture (same inputs and outputs), else a copy of ``current``."""
    import copy

    from edgekit.sources import resolve_source

    d = run.recipe.distill
    assert d is not None  # noqa: S101
    if d.student is None:
        return dataclasses.replace(current, module=copy.deepcopy(current.module))
    try:
        other = resolve_source(d.student, dict(source.example_inputs), weights=d.student_weights,
                               input_names=source.input_names)
    except EdgekitError as e:
        raise RecipeError("distill.student", e.problem, fix=e.fix) from e
    if other.input_names != source.input_names or len(other.output_names) < 1:
        raise RecipeError("distill.student", f"the student takes {other.input_names}, the teacher "
                          f"{source.input_names}", fix="give a student with the teacher's inputs")
    return dataclasses.replace(source, module=other.module, exported_program=None)


def _distill(run: _Run, source: ModelSource, current: ModelSource, attempt: int,
             setting: dict[str, Any]) -> tuple[ModelSource, StageReport | None]:
    from edgekit.optimize.distill import distill, module_names

    d = run.recipe.distill
    assert d is not None  # noqa: S101
    train = load_data(d.data, source) if d.data else None
    if train is None and run.calibration is not None:
        from edgekit.evaluate import EvalData

        train = EvalData(run.calibration)
    if train is None:
        raise CalibrationError("distillation needs training data and there is none",
                               fix="name a file in distill.data (.npz, text or JSONL), or pass --calib data")
    student = _student(run, source, current)
    if d.layer_map:
        check_names("distill.layer_map", list(d.layer_map), module_names(student), "student layer")
        check_names("distill.layer_map", list(d.layer_map.values()), module_names(source), "teacher layer")
    soft = d.soft_loss or ("mse" if source.task == "feature-extraction" else "kl")
    ev, data = run.evaluator, run.data
    eval_fn = None
    if ev is not None and data is not None and ev.scores_outputs:
        def eval_fn(module: Any) -> dict[str, Any]:
            return ev.evaluate(dataclasses.replace(student, module=module), data, run.baseline)

    ckpt = Path(d.checkpoint_dir) if d.checkpoint_dir else run.out / CHECKPOINTS / f"{run.original.name}-distill"
    t0 = time.perf_counter()
    result = distill(source, student.module, train.inputs, labels=train.labels, temperature=d.temperature,
                     alpha=d.alpha, hidden_weight=d.hidden_weight, layer_map=d.layer_map, soft_loss=soft,
                     epochs=d.epochs, batch_size=d.batch_size, grad_accum=d.grad_accum, lr=d.lr,
                     eval=eval_fn, patience=d.patience, checkpoint_dir=ckpt, progress=run.progress,
                     seed=d.seed)
    if not d.checkpoint_dir:  # finished: the default checkpoint has done its job
        shutil.rmtree(ckpt, ignore_errors=True)
    details = {**result.to_dict(), "data": train.origin, "labels": train.labels is not None,
               "student": d.student or ("the pruned model" if run.recipe.prune else "a copy of the original")}
    row = run.measure("distill", student, run.recipe.max_drop("distill"), setting=setting, attempt=attempt,
                      seconds=round(time.perf_counter() - t0, 3), details=details)
    return student, row if row.passed is False else None


def _artifact_stage(a: Artifact) -> str:
    return f"{a.format.value} {a.precision.value}"


def _gate_artifact(run: _Run, a: Artifact, attempt: int) -> StageReport:
    """The artifact's metric (from its verification when that measured the same metric, else by
    running it) against the quantize stage's allowed drop."""
    max_drop = run.recipe.max_drop("quantize")
    v = a.verification.metric if a.verification else None
    row = StageReport(_artifact_stage(a), {"precision": a.precision.value}, max_drop=max_drop, attempt=attempt,
                      details={"artifact": a.path.name})
    if run.evaluator is None or run.data is None or a.status is not ArtifactStatus.OK:
        run.report.stages.append(row)
        return row
    if v is not None and v.get("name") == run.evaluator.name and v.get("reference") is not None \
            and run.baseline is not None and run.baseline.value is not None:
        # the artifact's own change plus the torch stages' change: exact when both used the same data
        own = run.evaluator.drop(v["value"], v["reference"])
        before = run.evaluator.drop(v["reference"], run.baseline.value)
        value = run.baseline.value - (own + before) if run.evaluator.higher_is_better \
            else run.baseline.value + own + before
        row.metric = {**v, "value": value, "reference": run.baseline.value, "delta": value - run.baseline.value,
                      "artifact_delta": v["delta"], "artifact_data": v.get("data")}
    else:
        from edgekit.runtime import load

        try:
            with load(a.path, device="cpu") as m:
                row.metric = run.evaluator.evaluate(m, run.data, run.baseline)
        except EdgekitError as e:  # a runtime that cannot run the evaluation batches: not gated
            row.details["not_measured"] = e.problem
    run.judge(row)
    run.report.stages.append(row)
    return row


def _milder(a: Artifact, built: set[tuple[str, str]]) -> list[Precision]:
    from edgekit.converters import CONVERTERS

    if a.precision not in MILDER:
        return []
    supported = CONVERTERS.get(a.format).precisions
    later = MILDER[MILDER.index(a.precision) + 1:]
    return [p for p in later if p in supported and (a.format.value, p.value) not in built]


def _record_gate(a: Artifact, run: _Run, row: StageReport) -> None:
    """Add the artifact's own gate row to the recipe record in its manifest (rewritten atomically)."""
    from edgekit.fsutil import write_json_atomic

    path = a.manifest_path
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    record = data.get("recipe") or run.report.torch_dict()
    record["gate"] = row.to_dict()
    data["recipe"] = record
    write_json_atomic(path, data)


def _convert_and_gate(run: _Run, source: ModelSource, convert_kwargs: dict[str, Any]) -> list[Artifact]:
    from edgekit.conversion import convert_source

    record = run.report.torch_dict()
    arts = convert_source(source, evaluator=run.evaluator, record=record, **convert_kwargs)
    built = {(a.format.value, a.precision.value) for a in arts}
    final: list[Artifact] = []
    failures: list[StageReport] = []
    for a in arts:
        row, attempt, current = _gate_artifact(run, a, 1), 1, a
        _record_gate(current, run, row)
        while row.passed is False:
            final.append(dataclasses.replace(current, status=ArtifactStatus.FAILED, reason=row.describe()))
            ladder = _milder(current, built) if run.recipe.eval.on_fail == "step-back" else []
            if not ladder:
                failures.append(row)
                break
            attempt += 1
            kwargs = {**convert_kwargs, "targets": [current.format], "precisions": [ladder[0]]}
            (current,) = convert_source(source, evaluator=run.evaluator, record=record, **kwargs)
            built.add((current.format.value, current.precision.value))
            row = _gate_artifact(run, current, attempt)
            row.details["stepped_back_from"] = final[-1].precision.value
            _record_gate(current, run, row)
        else:
            final.append(current)
    if failures:
        raise run.stop(failures[0], final)
    return final


def _conversion(recipe: Recipe, targets: Sequence[str | Format] | str | None,
                precisions: Sequence[str | Precision] | str | None,
                options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Targets, precisions and options of the recipe's conversion, with the caller's over the
    recipe's, each option checked against its converter (no model needed, so it runs first)."""
    from edgekit.conversion import plan_converters

    q = recipe.quantize
    opts = {k: dict(v) for k, v in (q.options.items() if q else ())}
    for fmt, values in (options or {}).items():
        opts[str(fmt)] = {**opts.get(str(fmt), {}), **dict(values or {})}
    out = {"targets": targets or list(recipe.targets),
           "precisions": precisions if precisions is not None else (list(q.precisions) if q and q.precisions
                                                                    else None),
           "options": opts}
    plan_converters(out["targets"], out["precisions"], opts)
    return out


def run_recipe(
    recipe: Recipe | str | Path | Mapping[str, Any],
    model: ModelRef = None,
    example_inputs: ExampleInputs = None,
    *,
    out: str | Path = "edgekit-out",
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    targets: Sequence[str | Format] | str | None = None,
    precisions: Sequence[str | Precision] | str | None = None,
    options: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    weights: str | Path | None = None,
    seq_len: int | None = None,
    **convert_kwargs: Any,
) -> PipelineResult:
    """Run ``recipe`` on ``model`` (anything ``edgekit.convert`` takes) and return the artifacts and
    the stage report. ``targets``/``precisions`` given here override the recipe's; ``options`` are
    merged over ``quantize.options``. Raises :class:`GateError` when a stage exceeds its allowed drop
    (after trying milder settings with ``on_fail: step-back``)."""
    from edgekit.calib import EvalSet, check_data_files, load_calibration
    from edgekit.evaluate import EvalData, get_evaluator
    from edgekit.optimize.distill import module_names
    from edgekit.sources import resolve_source

    recipe = load_recipe(recipe)
    conversion = _conversion(recipe, targets, precisions, options)  # checked before the model loads or trains
    check_data_files(calib=calib, eval_data=eval_data)  # before the model loads or trains
    source = resolve_source(model, example_inputs, input_names=input_names, output_names=output_names,
                            dynamic_axes=dynamic_axes, weights=weights, seq_len=seq_len)
    if recipe.prune is not None:
        check_names("prune.exclude", recipe.prune.exclude, module_names(source))
    calibration = load_calibration(calib, source) if calib is not None else source.calibration
    data = load_data(eval_data, source) if eval_data is not None else EvalData.of(source.evaluation)
    evaluator = get_evaluator(recipe.eval.metric, task=source.task,
                              has_labels=data is not None and data.labels is not None,
                              higher_is_better=recipe.eval.higher_is_better)
    if data is None and calibration is not None and not evaluator.needs_labels:
        data = EvalData(calibration.take(256))  # unlabelled metrics can score the calibration inputs
    if data is None:
        if _gated(recipe):
            raise CalibrationError(f"the recipe's gates need evaluation data for the {evaluator.name} metric",
                                   fix="pass --eval data (labelled .npz or JSONL for accuracy; token data "
                                   "for perplexity or cosine)")
        evaluator = None
    elif evaluator.needs_labels and data.labels is None:
        evaluator.check(data)  # raises, naming what is missing
    out_dir = Path(out)
    run = _Run(recipe, source, calibration, data, evaluator, out_dir, progress)
    if evaluator is not None and data is not None:
        run.tell("evaluate original", 0, 1)
        run.baseline = evaluator.baseline(source, data)
        run.report.stages.append(StageReport("original", metric=evaluator.as_metric(
            run.baseline.value, data, run.baseline), drop=0.0))
    optimized = _prepare(run, source) if (recipe.prune or recipe.distill) else source
    optimized = dataclasses.replace(optimized, calibration=calibration, evaluation=(
        EvalSet(data.inputs, data.labels) if data is not None and data.labels is not None else None))
    kwargs = {**conversion, "out": out_dir, "progress": progress, **convert_kwargs}
    artifacts = _convert_and_gate(run, optimized, kwargs)
    run.report.status = "passed"
    return PipelineResult(artifacts, run.report, optimized)
