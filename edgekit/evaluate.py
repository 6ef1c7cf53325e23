"""Task metrics: accuracy (classifiers), perplexity (language models), cosine to the original
(embedding models), or a user's own function, on a torch model, a ``ModelSource`` or a loaded artifact.

Every evaluator returns the same metric dict the manifest's ``verification.metric`` holds:
``{"name", "value", "higher_is_better", "reference", "delta", "samples", "data", ...}``; with a
:class:`Baseline` (the original model's outputs and score) ``reference``/``delta`` are filled in.

>>> from edgekit.evaluate import EvalData, get_evaluator  # doctest: +SKIP
>>> ev = get_evaluator("accuracy")  # doctest: +SKIP
>>> base = ev.baseline(original_source, data)  # doctest: +SKIP
>>> ev.evaluate(pruned_source, data, base)["delta"]  # doctest: +SKIP
-0.004

A user metric is ``package.module:function``: ``f(outputs, labels) -> float`` gets the model's
first output over the whole data set (an array, samples on axis 0) and the labels (or None);
``f(model) -> float`` gets an object whose ``run(feed) -> {output: array}`` runs the model, for
metrics that need their own data. Set ``f.higher_is_better = False`` for an error-like metric.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgekit.errors import CalibrationError, ConfigError
from edgekit.options import did_you_mean
from edgekit.registry import Registry

if TYPE_CHECKING:
    from edgekit.calib import CalibrationSet

Feed = dict[str, np.ndarray]
Outputs = list[dict[str, np.ndarray]]  # one dict per evaluation batch
RunFn = Callable[[Feed], dict[str, np.ndarray]]

EVAL_BATCH = 64


@dataclass(frozen=True)
class EvalData:
    """Evaluation inputs and, for classifiers, one label per sample."""

    inputs: CalibrationSet
    labels: np.ndarray | None = None

    @property
    def origin(self) -> str:
        return self.inputs.origin

    @property
    def size(self) -> int:
        return self.inputs.size

    def batches(self) -> list[Feed]:
        return list(self.inputs.batches(EVAL_BATCH))

    @classmethod
    def of(cls, data: Any) -> EvalData | None:
        """An ``EvalSet`` (labelled), a ``CalibrationSet`` (unlabelled) or an EvalData, as EvalData."""
        if data is None or isinstance(data, EvalData):
            return data
        if hasattr(data, "labels") and hasattr(data, "data"):  # calib.EvalSet
            return cls(data.data, np.asarray(data.labels))
        if hasattr(data, "arrays"):  # calib.CalibrationSet
            return cls(data, None)
        raise ConfigError(f"evaluation data must be an EvalSet or CalibrationSet, got {type(data).__name__}",
                          fix="load it with edgekit.calib.load_eval or load_calibration")


@dataclass(frozen=True)
class Baseline:
    """The original model's outputs on the evaluation data and its score: what later stages are
    compared with."""

    outputs: Outputs
    value: float | None


class _TorchRunner:
    """A bare ``nn.Module`` with positional inputs in feed order, behind ``run(feed)``."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def run(self, feed: Feed) -> dict[str, np.ndarray]:
        import torch

        from edgekit.sources.module import _flatten_outputs

        args = [torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()]
        with torch.inference_mode():
            outs = _flatten_outputs(self.module(*args), None)
        names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
        return {n: o.detach().float().numpy() if o.is_floating_point() else o.numpy()
                for n, o in zip(names, outs)}


def runner(model: Any) -> RunFn:
    """``feed -> outputs`` for a ModelSource, a loaded edgekit Model (anything with ``run``), an
    ``nn.Module`` (inputs positional, in feed order) or such a function itself."""
    if hasattr(model, "reference") and hasattr(model, "input_names"):  # a ModelSource
        return model.reference
    if hasattr(model, "run"):
        return model.run
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            return _TorchRunner(model).run
    except ImportError:  # a runtime-only install evaluates loaded artifacts
        pass
    if callable(model):
        return model
    raise ConfigError(f"cannot evaluate a {type(model).__name__}",
                      fix="pass an nn.Module, a ModelSource or a model loaded with edgekit.load")


def _first(outputs: dict[str, np.ndarray], prefer: str = "logits") -> np.ndarray:
    return np.asarray(outputs[prefer] if prefer in outputs else next(iter(outputs.values())))


class Evaluator(ABC):
    """A task metric; subclasses register under a name with :func:`register`."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    scores_outputs: ClassVar[bool] = True  # False: needs the model itself (run it through ``evaluate``)

    def check(self, data: EvalData) -> None:
        if self.needs_labels and data.labels is None:
            raise CalibrationError(f"the {self.name} metric needs labelled evaluation data; "
                                   f"{data.origin} has no labels",
                                   fix="pass --eval data with labels (.npz with 'labels', or JSONL with "
                                   '"label"), or choose a metric that needs none: perplexity, cosine')

    @abstractmethod
    def score(self, outputs: Outputs, data: EvalData, reference: Outputs | None) -> dict[str, Any]:
        """``{"value": float, ...extra figures}`` of per-batch ``outputs`` on ``data``."""

    def metric(self, outputs: Outputs, data: EvalData, baseline: Baseline | None = None) -> dict[str, Any]:
        """The manifest's metric dict of ``outputs``, compared with ``baseline`` when given."""
        figures = self.score(outputs, data, baseline.outputs if baseline else None)
        return self.as_metric(float(figures.pop("value")), data, baseline, figures)

    def as_metric(self, value: float, data: EvalData, baseline: Baseline | None = None,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``value`` in the manifest's metric form, with ``reference``/``delta`` from ``baseline``."""
        ref = baseline.value if baseline is not None else None
        return {"name": self.name, "value": value, "higher_is_better": self.higher_is_better,
                "reference": ref, "delta": None if ref is None else value - ref,
                "samples": int(data.size), "data": data.origin, **(extra or {})}

    def run(self, model: Any, data: EvalData) -> Outputs:
        run = runner(model)
        return [run(feed) for feed in data.batches()]

    def baseline(self, original: Any, data: EvalData) -> Baseline:
        """Score the original model once; later stages are compared with it."""
        self.check(data)
        if not self.scores_outputs:
            return Baseline([], self._call_model(original))
        outs = self.run(original, data)
        return Baseline(outs, float(self.score(outs, data, outs)["value"]))

    def evaluate(self, model: Any, data: EvalData, baseline: Baseline | None = None) -> dict[str, Any]:
        """Run ``model`` on ``data`` and return its metric dict."""
        self.check(data)
        return self.metric(self.run(model, data), data, baseline)

    def drop(self, value: float, reference: float) -> float:
        """How much worse ``value`` is than ``reference`` (positive = worse), in metric units."""
        return reference - value if self.higher_is_better else value - reference

    def _call_model(self, model: Any) -> float:  # overridden by model-taking user metrics
        raise NotImplementedError


# metric name -> Evaluator class; plugins register through the ``edgekit.evaluators`` entry points
EVALUATORS: Registry[str, type[Evaluator]] = Registry("evaluator", "edgekit.evaluate", "edgekit.evaluators")


def register(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    """Decorator: ``@register("accuracy")`` above an :class:`Evaluator` subclass."""

    def deco(cls: type[Evaluator]) -> type[Evaluator]:
        cls.name = name
        return EVALUATORS.register(name)(cls)

    return deco


@register("accuracy")
class Accuracy(Evaluator):
    """Top-1 accuracy of the first output against integer labels."""

    needs_labels = True

    def score(self, outputs: Outputs, data: EvalData, reference: Outputs | None) -> dict[str, Any]:
        preds = [_first(o).reshape(len(_first(o)), -1).argmax(-1) for o in outputs]
        return {"value": float((np.concatenate(preds) == np.asarray(data.labels)).mean())}


@register("perplexity")
class Perplexity(Evaluator):
    """Next-token perplexity of a causal LM over the real (unmasked) tokens of each row."""

    higher_is_better = False

    def score(self, outputs: Outputs, data: EvalData, reference: Outputs | None) -> dict[str, Any]:
        from edgekit.perplexity import ROWS, log_softmax

        nll: list[np.ndarray] = []
        for out, feed in zip(outputs, data.batches()):
            logits, ids = _first(out), np.asarray(feed["input_ids"])
            mask = np.asarray(feed.get("attention_mask", np.ones_like(ids))).astype(bool)
            for row_logits, row_ids, row_mask in zip(logits, ids, mask):
                keep = row_mask[:-1] & row_mask[1:]  # position i predicts token i + 1, both real
                pos, targets = np.nonzero(keep)[0], row_ids[1:][keep]
                for start in range(0, len(pos), ROWS):
                    lp = log_softmax(row_logits[pos[start:start + ROWS]])
                    nll.append(-lp[np.arange(len(lp)), targets[start:start + ROWS]])
        if not nll:
            raise CalibrationError(f"{data.origin} holds no pair of consecutive real tokens to score",
                                   fix="give longer texts for the perplexity metric")
        tokens = np.concatenate(nll)
        return {"value": float(np.exp(tokens.mean())), "tokens": int(tokens.size)}


def _pooled(out: np.ndarray, feed: Feed) -> np.ndarray:
    """One vector per sample: token states mean-pooled under the attention mask, else flattened."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 3 and "attention_mask" in feed:
        mask = np.asarray(feed["attention_mask"], dtype=np.float64)[..., None]
        return (out * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
    return out.reshape(len(out), -1)


@register("cosine")
class CosineToOriginal(Evaluator):
    """Mean cosine similarity of each sample's (pooled) first output to the original model's."""

    def score(self, outputs: Outputs, data: EvalData, reference: Outputs | None) -> dict[str, Any]:
        if reference is None:
            raise ConfigError("the cosine metric compares with the original model, and none was given",
                              fix="evaluate with a baseline: evaluator.baseline(original, data)")
        cos = []
        for out, ref, feed in zip(outputs, reference, data.batches()):
            a, b = _pooled(_first(out), feed), _pooled(_first(ref), feed)
            den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cos.append(np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-30), 1.0))
        allc = np.concatenate(cos)
        return {"value": float(allc.mean()), "min": float(allc.min())}


class UserMetric(Evaluator):
    """A user function: ``f(outputs, labels) -> float`` or ``f(model) -> float``."""

    def __init__(self, func: Callable[..., float], name: str, higher_is_better: bool | None = None) -> None:
        self.func = func
        self.name = name  # type: ignore[misc]
        self.higher_is_better = bool(getattr(func, "higher_is_better", True)  # type: ignore[misc]
                                     if higher_is_better is None else higher_is_better)
        try:
            params = [p for p in inspect.signature(func).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            params = []
        self.scores_outputs = len(params) != 1  # type: ignore[misc]

    def check(self, data: EvalData) -> None:
        pass  # the function decides what it needs

    def score(self, outputs: Outputs, data: EvalData, reference: Outputs | None) -> dict[str, Any]:
        firsts = [next(iter(o.values())) for o in outputs]
        try:
            stacked: Any = np.concatenate(firsts)
        except ValueError:  # batches of different shapes: hand them over as a list
            stacked = firsts
        return {"value": self._value(self.func(stacked, data.labels))}

    def evaluate(self, model: Any, data: EvalData, baseline: Baseline | None = None) -> dict[str, Any]:
        if self.scores_outputs:
            return super().evaluate(model, data, baseline)
        return self.as_metric(self._call_model(model), data, baseline, {})

    def _call_model(self, model: Any) -> float:
        run = runner(model)

        class _Model:  # the one method a model-taking metric may rely on, for torch and artifacts alike
            def run(self, feed: Feed) -> dict[str, np.ndarray]:
                return run(feed)

        return self._value(self.func(_Model()))

    def _value(self, value: Any) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"the metric {self.name} returned {type(value).__name__}, not a number",
                              fix="return a float from the metric function") from None


DEFAULT_BY_TASK = {"text-generation": "perplexity", "feature-extraction": "cosine"}


def default_metric(task: str | None, has_labels: bool) -> str:
    """Accuracy with labels; else by task: perplexity for LMs, cosine to the original otherwise."""
    if task in DEFAULT_BY_TASK:
        return DEFAULT_BY_TASK[task]
    return "accuracy" if has_labels else "cosine"


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function``."""
    module_name, _, attr = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import the metric {spec}: {e}",
                          fix="check that the module is importable (PYTHONPATH) and defines the function"
                          ) from e
    if not callable(func):
        raise ConfigError(f"{spec} is a {type(func).__name__}, not a function",
                          fix="name a function f(outputs, labels) -> float or f(model) -> float")
    return func


def get_evaluator(spec: str | Evaluator | Callable[..., float] | None = None, *, task: str | None = None,
                  has_labels: bool = False, higher_is_better: bool | None = None) -> Evaluator:
    """An evaluator from a registered name, ``package.module:function``, a function, an Evaluator,
    or None (the default for ``task``; see :func:`default_metric`)."""
    if isinstance(spec, Evaluator):
        return spec
    if spec is None:
        spec = default_metric(task, has_labels)
    if callable(spec):
        return UserMetric(spec, getattr(spec, "__name__", "metric"), higher_is_better)
    name = str(spec).strip()
    if name in EVALUATORS:
        return EVALUATORS.get(name)()
    if ":" in name:
        return UserMetric(load_callable(name), name, higher_is_better)
    raise ConfigError(f"unknown metric {name!r}", fix=f"{did_you_mean(name, EVALUATORS)}use one of: "
                      f"{', '.join(EVALUATORS)}, or package.module:function")


def evaluate(model: Any, data: Any, metric: str | Evaluator | Callable[..., float] | None = None, *,
             original: Any = None, task: str | None = None) -> dict[str, Any]:
    """One call: the metric dict of ``model`` on ``data`` (an EvalSet, CalibrationSet or EvalData),
    compared with ``original`` when given.

    >>> evaluate(pruned, eval_set, "accuracy", original=model)["delta"]  # doctest: +SKIP
    """
    ev_data = EvalData.of(data)
    if ev_data is None:
        raise CalibrationError("no evaluation data", fix="pass labelled data (--eval) or token data")
    ev = get_evaluator(metric, task=task or getattr(model, "task", None), has_labels=ev_data.labels is not None)
    baseline = ev.baseline(original, ev_data) if original is not None else None
    return ev.evaluate(model, ev_data, baseline)
