"""Per-layer sensitivity: perturb one layer at a time in PyTorch (int8 fake-quantization or a
magnitude prune), measure what it costs, rank the layers, and turn the worst into each backend's
exclusion list.

The cost is the task metric's drop on ``eval`` data when given (accuracy, perplexity, cosine or a
user metric, through :mod:`edgekit.evaluate`), else the damage to the model's outputs against the
unperturbed model: ``1 - worst cosine`` over the samples (max abs error breaks ties).

>>> report = sensitivity(model, x, mode="quantize")  # doctest: +SKIP
>>> report.rows[0].name  # doctest: +SKIP
'encoder.layer.3.output.dense'
>>> report.exclusions("onnx", top=2)  # doctest: +SKIP
{'exclude_layers': ['encoder.layer.3.output.dense', 'classifier']}
>>> edgekit.convert(model, x, targets=["onnx"], options={"onnx": report.exclusions("onnx", top=2)})  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError
from edgekit.optimize import perturb
from edgekit.optimize.exclusions import find_layers, native_options, resolve
from edgekit.types import ExampleInputs, ModelRef, ProgressFn

SCHEMA = "edgekit.sensitivity/1"
DEFAULT_SAMPLES = 32  # calibration samples run per layer, on top of the example inputs
# A layer stands out when its score passes both: NOISE_FACTOR times the typical score of the other
# layers, and the smallest cost worth a float layer (1 - worst cosine of 1e-3 is int8's own parity
# tolerance; for accuracy, one sample of the evaluation data). Below it, every layer quantizes fine.
NOISE_FACTOR = 10.0
MIN_OUTPUT_SCORE = 1e-3
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's cost when only it is perturbed."""

    name: str
    kind: str
    params: int
    score: float  # higher = more sensitive: the metric's drop, or 1 - worst cosine
    worst_cosine: float
    max_abs_err: float
    metric: float | None = None  # the task metric with this layer perturbed
    metric_drop: float | None = None  # reference - value (for lower-is-better metrics: value - reference)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": self.params, "score": self.score,
                "worst_cosine": self.worst_cosine, "max_abs_err": self.max_abs_err,
                "metric": self.metric, "metric_drop": self.metric_drop}


@dataclass(frozen=True)
class SensitivityReport:
    """Layers ranked most sensitive first, and how they were measured."""

    mode: str
    rows: tuple[LayerSensitivity, ...]
    settings: dict[str, Any]
    score: str  # what ``score`` means
    source: str
    samples: int
    metric_name: str | None = None
    metric_reference: float | None = None
    model: Any = field(default=None, repr=False, compare=False)  # the ModelSource, for native names

    @property
    def noise_floor(self) -> float:
        """The score a layer must pass to be worth keeping in float: ``NOISE_FACTOR`` times the median
        score of the layers below the top one, and at least the smallest cost that matters."""
        scores = sorted((r.score for r in self.rows), reverse=True)
        typical = float(np.median(scores[1:])) if len(scores) > 1 else 0.0
        if self.metric_name is None:
            least = MIN_OUTPUT_SCORE
        elif self.metric_name == "accuracy":
            least = 1.0 / max(self.samples, 1)  # one sample's answer
        else:
            least = 0.0
        return max(least, NOISE_FACTOR * max(typical, 0.0))

    def standouts(self) -> list[str]:
        """Layers whose score is above :attr:`noise_floor`, most sensitive first (may be empty)."""
        floor = self.noise_floor
        return [r.name for r in self.rows if r.score > floor]

    def select(self, *, top: int | None = None, threshold: float | None = None,
               above_noise: bool = False) -> list[str]:
        """Names of the ``top`` most sensitive layers, and/or of those scoring at least ``threshold``;
        ``above_noise`` keeps only layers that stand out from the noise floor (a recommendation)."""
        if top is None and threshold is None:
            raise ConfigError("choose the layers to exclude with top=N or threshold=SCORE",
                              fix="e.g. report.exclusions('onnx', top=3)")
        if top is not None and top < 0:
            raise ConfigError(f"top must be >= 0, got {top}", fix="e.g. top=3")
        floor = self.noise_floor if above_noise else None
        rows = [r for r in self.rows if (threshold is None or r.score >= threshold)
                and (floor is None or r.score > floor)]
        return [r.name for r in (rows[:top] if top is not None else rows)]

    def exclusions(self, format: str, *, top: int | None = None, threshold: float | None = None,
                   native: bool = False, above_noise: bool = False) -> dict[str, Any]:
        """Converter options for ``format`` that keep the chosen layers out of quantization.

        By default ``{"exclude_layers": [...]}`` (every converter maps PyTorch names itself and
        checks the result); ``native=True`` exports the model once with that format's exporter and
        returns the backend's own option and names (``nodes_to_exclude`` for ONNX Runtime and NNCF,
        ``exclude_scopes`` for ai-edge-quantizer, GGUF tensor names).
        """
        from edgekit.types import Format

        fmt = Format.parse(format)
        names = self.select(top=top, threshold=threshold, above_noise=above_noise)
        if not native:
            return {"exclude_layers": names}
        if self.model is None:
            raise ConfigError("this report was loaded without its model, so native names cannot be found",
                              fix="run sensitivity() again, or pass exclude_layers (PyTorch names) instead")
        return native_options(self.model, fmt.value, names) if names else {}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "mode": self.mode, "source": self.source, "settings": self.settings,
                "score": self.score, "samples": self.samples, "noise_floor": self.noise_floor,
                "metric": {"name": self.metric_name, "reference": self.metric_reference}
                if self.metric_name else None,
                "layers": [r.to_dict() for r in self.rows]}

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from edgekit.fsutil import write_json_atomic

            write_json_atomic(Path(path), self.to_dict())
        return text

    def table_rows(self) -> list[tuple[str, ...]]:
        """(rank, layer, kind, params, score, worst cosine, max abs err, metric) as text."""
        out = []
        for i, r in enumerate(self.rows, 1):
            metric = "-" if r.metric is None else f"{r.metric:.4f} ({-(r.metric_drop or 0):+.4f})"
            out.append((str(i), r.name, r.kind, f"{r.params:,}", f"{r.score:.4g}", f"{r.worst_cosine:.5f}",
                        f"{r.max_abs_err:.4g}", metric))
        return out

    def __rich__(self) -> Any:
        from rich.markup import escape
        from rich.table import Table

        title = f"{self.mode} sensitivity of {self.source} ({self.samples} samples; score = {self.score})"
        t = Table(title=escape(title), title_justify="left")
        for col in ("#", "layer", "kind", "params", "score", "worst cosine", "max abs err",
                    self.metric_name or "metric"):
            t.add_column(col, justify="right" if col not in ("layer", "kind") else "left")
        for row in self.table_rows():
            t.add_row(*(escape(c) for c in row))
        return t


def sensitivity(source_or_module: ModelRef, example_inputs: ExampleInputs = None, *, mode: str = "quantize",
                data: Any = None, eval: Any = None, metric: Any = None, amount: float = 0.5,
                bits: int = 8, activation_bits: int = 8, layers: Iterable[str] | None = None,
                top: int | None = None, samples: int = DEFAULT_SAMPLES,
                progress: ProgressFn | None = None, **source_kwargs: Any) -> SensitivityReport:
    """Rank the layers of a model by how much perturbing each one alone costs.

    ``source_or_module`` is anything ``edgekit.convert`` takes (an ``nn.Module`` with
    ``example_inputs``, a Hugging Face directory, a ``.pt2``...) or a ``ModelSource``. ``mode`` is
    ``"quantize"`` (int8 weights per channel + int8 inputs per tensor, ``bits``/``activation_bits``)
    or ``"prune"`` (``amount`` of the output units). ``data`` (a calibration ``.npz``/text path, a
    CalibrationSet, or feeds) gives the inputs the outputs are compared on (default: the example
    and the source's own calibration samples, up to ``samples``). ``eval`` (a path for ``--eval``,
    an EvalSet) scores with ``metric`` (None: accuracy on labels, else by task). ``top`` keeps the
    ``top`` most sensitive rows. The model is left as it was.
    """
    from edgekit.sources import resolve_source
    from edgekit.verify import Reference

    if not 0.0 < amount <= 1.0:
        raise ConfigError(f"amount must be in (0, 1], got {amount}", fix="e.g. amount=0.5")
    if not 2 <= bits <= 16 or not (activation_bits == 0 or 2 <= activation_bits <= 16):
        raise ConfigError(f"bits must be in [2, 16] (activation_bits 0 or [2, 16]), got {bits}/{activation_bits}",
                          fix="e.g. bits=8 (int8) or bits=4")
    apply = perturb.get(mode)
    from edgekit.calib import check_data_files

    check_data_files(calib=data if isinstance(data, (str, Path)) else None,  # before the model loads
                     eval_data=eval if isinstance(eval, (str, Path)) else None)
    source = resolve_source(source_or_module, example_inputs, **source_kwargs)
    found = find_layers(source)
    names = resolve(source, layers) if layers is not None else list(found)
    if not names:
        raise ConfigError(f"{source.name} has no weight-bearing layers (Linear, Conv, Embedding)",
                          fix="pass a model with such layers")
    feeds = _feeds(source, data, samples)
    evaluation = _evaluation(source, eval)
    ref = Reference.build(source, feeds, evaluation, metric)
    settings = perturb.Settings(bits, activation_bits, amount)
    mods = dict(_named(source))
    rows = []
    for i, name in enumerate(names):
        if progress:
            progress(f"{mode} sensitivity", i, len(names))
        undo = apply(mods[name], settings)
        try:
            rows.append(_measure(source, ref, found[name]))
        finally:
            undo()
    if progress:
        progress(f"{mode} sensitivity", len(names), len(names))
    rows.sort(key=lambda r: (-r.score, r.worst_cosine, -r.max_abs_err))
    with_metric = ref.baseline is not None and ref.evaluator is not None
    return SensitivityReport(
        mode=mode, rows=tuple(rows[:top] if top is not None else rows),
        settings={"bits": bits, "activation_bits": activation_bits} if mode == "quantize" else {"amount": amount},
        score=f"{ref.evaluator.name} drop" if with_metric else "1 - worst cosine to the original",
        source=source.name, samples=sum(len(next(iter(f.values()))) for f in feeds),
        metric_name=ref.evaluator.name if with_metric else None,
        metric_reference=ref.baseline.value if with_metric else None, model=source)


def _named(source: Any) -> Iterable[tuple[str, Any]]:
    from edgekit.optimize.exclusions import user_module

    return user_module(source).named_modules()


def _measure(source: Any, ref: Any, layer: Any) -> LayerSensitivity:
    from edgekit.types import Precision
    from edgekit.verify import compare

    got = [source.reference(f) for f in ref.all_feeds]
    v = compare(ref, got, Precision.INT8)
    floats = [o for o in v.outputs if np.isfinite(o.min_cosine)] or list(v.outputs)
    worst = min(o.min_cosine for o in floats) if floats else 1.0
    err = max(o.max_abs_err for o in floats) if floats else 0.0
    if not np.isfinite(worst):
        worst = -1.0
    value = drop = None
    if v.metric is not None and v.metric.get("reference") is not None:
        value = float(v.metric["value"])
        drop = ref.evaluator.drop(value, float(v.metric["reference"]))
    score = drop if drop is not None else 1.0 - worst
    return LayerSensitivity(layer.name, layer.kind, layer.params, float(score), float(worst), float(err),
                            value, drop)


def _feeds(source: Any, data: Any, limit: int) -> list[Feed]:
    from edgekit.calib import CalibrationSet, load_calibration

    feeds: list[Feed] = [dict(source.example_inputs)]
    if data is None:
        data = source.calibration
    elif isinstance(data, (str, Path)):
        data = load_calibration(data, source)
    if isinstance(data, CalibrationSet):
        feeds += list(data.take(limit).batches(8))
    elif isinstance(data, Mapping):
        feeds.append({k: np.asarray(v) for k, v in data.items()})
    elif isinstance(data, Sequence):
        feeds += [{k: np.asarray(v) for k, v in f.items()} for f in data]
    elif data is not None:
        raise ConfigError(f"data must be a path, a CalibrationSet or feeds, got {type(data).__name__}",
                          fix="pass a calibration .npz (or text for a Hugging Face text model)")
    return feeds


def _evaluation(source: Any, eval_data: Any) -> Any:
    if isinstance(eval_data, (str, Path)):
        from edgekit.calib import load_eval

        return load_eval(eval_data, source)
    return eval_data
