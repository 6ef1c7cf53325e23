"""Recipes: prune -> distill -> quantize -> targets as one validated, versioned YAML/JSON document.

A recipe is a frozen :class:`Recipe` (sections are frozen dataclasses, validated on creation);
``load_recipe``/``dump_recipe`` read and write it, and the manifest of every artifact a recipe
produced stores ``Recipe.to_dict()``. Every validation error is a :class:`RecipeError` naming the
key path (``prune.sparsity``, ``targets[1]``) and, for an unknown key, the closest known one.

>>> r = load_recipe("recipe.yaml")  # doctest: +SKIP
>>> load_recipe(dump_recipe(r)) == r  # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from edgekit.errors import ConfigError, RecipeError
from edgekit.options import coerce, did_you_mean

SCHEMA = "edgekit.recipe/1"
ON_FAIL = ("stop", "step-back")
PRUNE_METHODS = ("structured", "unstructured")
PRUNE_TARGETS = ("channels", "ffn", "heads", "layers")
IMPORTANCE = ("magnitude", "taylor")
SCOPES = ("global", "layer")
SOFT_LOSSES = ("kl", "mse")
MAX_NODES = 20_000  # values in the expanded recipe: a real one has well under 1,000; YAML aliases can
# expand a 1 kB file to billions (an "alias bomb"), which loads in a blink and hangs whoever walks it

S = TypeVar("S", bound="_Section")


def check_names(key: str, names: Iterable[str], known: Iterable[str], what: str = "layer") -> None:
    """Raise a :class:`RecipeError` at ``key[i]`` for the first of ``names`` not in ``known``."""
    known = list(known)
    for i, name in enumerate(names):
        if name not in known:
            raise RecipeError(f"{key}[{i}]", f"the model has no {what} named {name!r}",
                              fix=f"{did_you_mean(name, known)}names look like: {', '.join(known[:8])}")


def _recipe_error(path: str, problem: str, fix: str) -> RecipeError:
    return RecipeError(path, problem, fix=fix)


def _bad(path: str, want: str, value: Any) -> RecipeError:
    return RecipeError(path, f"expected {want}, got {value!r}", fix=f"give {path.rsplit('.', 1)[-1]} {want}")


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """``value`` (from YAML/JSON or Python) as the field's declared type, or a RecipeError at ``path``:
    :func:`edgekit.options.coerce`, the coercer of ``-O`` options too, with sections built in place."""
    return coerce(hint, value, path, _recipe_error,
                  lambda cls, v, p: v if isinstance(v, cls) else cls.from_dict(v, p))


def _plain(value: Any) -> Any:
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class _Section:
    """A recipe section: fields coerced and checked on creation, errors at ``<key>.<field>``."""

    key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(hints[f.name], getattr(self, f.name), self.path(f.name)))
        self.check()

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def check(self) -> None:
        """Range and vocabulary checks; raise :class:`RecipeError` at the field's path."""

    def _one_of(self, name: str, allowed: Iterable[str]) -> None:
        value, allowed = getattr(self, name), list(allowed)
        if value not in allowed:
            raise RecipeError(self.path(name), f"{value!r} is not one of {', '.join(allowed)}",
                              fix=f"{did_you_mean(str(value), allowed)}use one of: {', '.join(allowed)}")

    def _range(self, name: str, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False, why: str = "") -> None:
        value = getattr(self, name)
        if value is None:
            return
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
            hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
            raise RecipeError(self.path(name), f"{value!r} is out of range (need {lo}{name}{hi})",
                              fix=why or f"give {name} a value with {lo}{name}{hi}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts); fields left at None are omitted."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls: type[S], raw: Any, path: str | None = None) -> S:
        path = cls.key if path is None else path
        if not isinstance(raw, Mapping) and not path:
            raise RecipeError("", f"a recipe is a mapping of keys to values, not a {type(raw).__name__}",
                              fix=f"start it with schema: {SCHEMA}, then targets, eval, prune, distill, quantize")
        if not isinstance(raw, Mapping):
            raise _bad(path, "a mapping of keys to values", raw)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k in raw:
            if k not in fields:
                where = f"{path}.{k}" if path else str(k)
                raise RecipeError(where, "unknown key",
                                  fix=f"{did_you_mean(str(k), fields)}known keys here: {', '.join(fields)}")
        for name, f in fields.items():
            if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"{path}.{name}" if path else name, "is required",
                                  fix=f"add {name}: to the {path or 'top level'} section")
        return cls(**dict(raw))


@dataclass(frozen=True)
class EvalSettings(_Section):
    """The metric every stage is measured with, the default allowed drop, and what a failure does."""

    key: ClassVar[str] = "eval"
    metric: str | None = None  # accuracy | perplexity | cosine | package.module:function; None: by task
    max_drop: float | None = None  # allowed drop from the original, in metric units, for every stage
    on_fail: str = "stop"  # stop | step-back (retry the failed stage with a milder setting)
    higher_is_better: bool | None = None  # for a user function (default true)

    def check(self) -> None:
        self._range("max_drop", 0.0, why="max_drop is how much of the metric a stage may lose, e.g. 0.01")
        self._one_of("on_fail", ON_FAIL)
        if self.metric is not None and ":" not in self.metric:
            from edgekit.evaluate import EVALUATORS

            self._one_of("metric", list(EVALUATORS))


@dataclass(frozen=True)
class PruneStage(_Section):
    """Arguments of ``edgekit.optimize.prune.prune`` plus the stage's gate."""

    key: ClassVar[str] = "prune"
    sparsity: float
    method: str = "structured"
    targets: tuple[str, ...] | None = None  # subset of channels, ffn, heads, layers; None: the pruner's
    importance: str = "magnitude"
    scope: str | None = None  # None: the pruner's (per layer for transformers, so GGUF gets uniform layers)
    exclude: tuple[str, ...] = ()
    max_drop: float | None = None
    step_back: tuple[float, ...] | None = None  # milder sparsities to try on a failed gate; None: halve twice

    def check(self) -> None:
        why = "sparsity is the fraction of weights to remove: between 0 and 1, e.g. 0.3"
        self._range("sparsity", 0.0, 1.0, low_open=True, high_open=True, why=why)
        self._one_of("method", PRUNE_METHODS)
        self._one_of("importance", IMPORTANCE)
        if self.scope is not None:
            self._one_of("scope", SCOPES)
        self._range("max_drop", 0.0)
        for i, t in enumerate(self.targets or ()):
            if t not in PRUNE_TARGETS:
                raise RecipeError(f"prune.targets[{i}]", f"{t!r} is not a pruning target",
                                  fix=f"{did_you_mean(t, PRUNE_TARGETS)}use some of: {', '.join(PRUNE_TARGETS)}")
        for i, s in enumerate(self.step_back or ()):
            if not 0.0 < s < self.sparsity:
                raise RecipeError(f"prune.step_back[{i}]", f"{s!r} is not milder than sparsity {self.sparsity}",
                                  fix="list sparsities between 0 and prune.sparsity, mildest last")

    def milder(self) -> list[float]:
        """Sparsities to retry with after a failed gate, in order."""
        if self.step_back is not None:
            return list(self.step_back)
        return [round(self.sparsity / 2, 4), round(self.sparsity / 4, 4)]


@dataclass(frozen=True)
class DistillStage(_Section):
    """Arguments of ``edgekit.optimize.distill.distill``: the teacher is the original model."""

    key: ClassVar[str] = "distill"
    student: str | None = None  # a model reference (HF dir, package.module:factory); None: the pruned model
    student_weights: str | None = None  # weights for a factory student
    data: str | None = None  # training data (.npz, text or JSONL, labels optional); None: the --calib data
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft-target loss; 1 - alpha goes to the hard labels when given
    hidden_weight: float = 0.0
    layer_map: dict[str, str] | None = None  # student layer -> teacher layer; None: evenly spaced blocks
    soft_loss: str | None = None  # kl | mse; None: mse for embedding models, kl otherwise
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    patience: int | None = 2  # epochs without improvement before stopping; None: never stop early
    checkpoint_dir: str | None = None  # None: <out>/.edgekit-checkpoints/
    seed: int = 0
    max_drop: float | None = None

    def check(self) -> None:
        self._range("temperature", 0.0, low_open=True)
        self._range("alpha", 0.0, 1.0)
        self._range("hidden_weight", 0.0)
        for name in ("epochs", "batch_size", "grad_accum", "patience"):
            self._range(name, 1)
        self._range("lr", 0.0, low_open=True)
        self._range("max_drop", 0.0)
        if self.soft_loss is not None:
            self._one_of("soft_loss", SOFT_LOSSES)


@dataclass(frozen=True)
class QuantizeStage(_Section):
    """Precisions built for every target, converter options per format, and the artifacts' gate."""

    key: ClassVar[str] = "quantize"
    precisions: tuple[str, ...] | None = None  # None: each converter's defaults
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # format -> converter options
    max_drop: float | None = None

    def check(self) -> None:
        from edgekit.types import Format, Precision

        self._range("max_drop", 0.0)
        object.__setattr__(self, "precisions", _vocab(Precision, self.precisions, self.path("precisions")))
        canonical: dict[str, dict[str, Any]] = {}  # ir -> openvino: the key the converter looks up
        for fmt, values in self.options.items():
            (name,) = _vocab(Format, (fmt,), self.path(f"options.{fmt}"), index=False) or ()
            _converter_options(Format(name), values, self.path(f"options.{fmt}"))
            canonical[name] = {**canonical.get(name, {}), **values}
        object.__setattr__(self, "options", canonical)


def _converter_options(fmt: Any, values: Mapping[str, Any], path: str) -> None:
    """Check ``quantize.options.<format>`` against that converter's options (keys and value types)
    when the recipe loads, not when the conversion finally reaches them after pruning and training."""
    from edgekit.converters import CONVERTERS
    from edgekit.options import parse_options

    try:
        parse_options(CONVERTERS.get(fmt).Options, values)
    except ConfigError as e:
        raise RecipeError(path, e.problem, fix=e.fix) from None


def _vocab(enum: Any, values: tuple[str, ...] | None, path: str, index: bool = True) -> tuple[str, ...] | None:
    """Canonical spellings of enum values (``f16`` -> ``fp16``), or a RecipeError at ``path[i]``."""
    if values is None:
        return None
    out = []
    for i, v in enumerate(values):
        try:
            out.append(enum.parse(v).value)
        except ConfigError as e:
            hint = did_you_mean(str(v).strip().lower(), [m.value for m in enum])
            raise RecipeError(f"{path}[{i}]" if index else path, e.problem, fix=f"{hint}{e.fix}") from None
    return tuple(out)


@dataclass(frozen=True)
class Recipe(_Section):
    """prune -> distill -> quantize -> targets, each stage optional, gated by ``eval``.

    >>> Recipe(targets=("onnx",), prune=PruneStage(sparsity=0.3), eval=EvalSettings(max_drop=0.01))  # doctest: +SKIP
    """

    schema: str = SCHEMA
    name: str | None = None
    targets: tuple[str, ...] = ("onnx",)
    eval: EvalSettings = field(default_factory=EvalSettings)
    prune: PruneStage | None = None
    distill: DistillStage | None = None
    quantize: QuantizeStage | None = None

    def check(self) -> None:
        if self.schema != SCHEMA:
            raise RecipeError("schema", f"{self.schema!r} is not a recipe version this edgekit reads",
                              fix=f"write schema: {SCHEMA} (or upgrade edgekit for a newer recipe)")
        if not self.targets:
            raise RecipeError("targets", "is empty", fix="name at least one format, e.g. [onnx]")
        from edgekit.types import Format

        object.__setattr__(self, "targets", _vocab(Format, self.targets, "targets"))
        if self.prune is not None and self.distill is not None and self.distill.student is not None:
            raise RecipeError("distill.student", "a student architecture replaces the pruned model, so the "
                              "prune section would be thrown away", fix="drop the prune section, or drop "
                              "distill.student to distill the pruned model")

    @classmethod
    def from_dict(cls, raw: Any, path: str | None = None) -> Recipe:  # type: ignore[override]
        if isinstance(raw, Mapping) and "schema" not in raw:
            raise RecipeError("schema", "is missing", fix=f"start the recipe with schema: {SCHEMA}")
        return super().from_dict(raw, path)

    def max_drop(self, stage: str) -> float | None:
        """The allowed drop of ``stage`` (prune, distill, quantize): its own, else the global one."""
        section = getattr(self, stage, None)
        own = getattr(section, "max_drop", None)
        return own if own is not None else self.eval.max_drop


def load_recipe(source: str | Path | Mapping[str, Any] | Recipe) -> Recipe:
    """A recipe from a YAML/JSON file, YAML/JSON text, a mapping, or a Recipe (returned as is)."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Mapping):
        return Recipe.from_dict(source)
    text, origin, is_json = str(source), None, False
    if isinstance(source, Path) or ("\n" not in text and (
            Path(text).suffix.lower() in (".yaml", ".yml", ".json") or Path(text).is_file())):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"no such recipe file: {path}", fix="check the --recipe path")
        text, origin, is_json = path.read_text(encoding="utf-8"), path.name, path.suffix.lower() == ".json"
    try:
        raw = _parse(text, origin or "the recipe text", is_json)
        _check_size(raw, origin or "the recipe text")
        return Recipe.from_dict(raw)
    except RecipeError as e:
        if origin is None or e.origin:
            raise
        raise RecipeError(e.key, e.detail, fix=e.fix, origin=origin) from None


def _parse(text: str, origin: str, is_json: bool) -> Any:
    if is_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError("", f"{origin} is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}",
                              fix="fix the JSON syntax at that position") from None
    from edgekit.deps import require

    yaml = require("yaml", "convert", "reading YAML recipes")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError("", f"{origin} is not valid YAML{where}: {problem}",
                          fix="check the indentation and the 'key: value' syntax at that position") from None


def _check_size(raw: Any, origin: str) -> None:
    """Refuse a document whose expanded tree holds more than ``MAX_NODES`` values; the walk stops
    at the limit, so it costs at most that many steps whatever the aliases would expand to."""
    stack, seen = [raw], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise RecipeError("", f"{origin} expands to more than {MAX_NODES:,} values (YAML aliases "
                              "repeated inside each other?)",
                              fix="write the values out; a recipe needs no anchors or aliases")
        if isinstance(node, Mapping):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def dump_recipe(recipe: Recipe, *, fmt: str = "yaml") -> str:
    """The recipe as YAML text (``fmt="json"``: JSON); ``load_recipe`` reads either back equal."""
    data = recipe.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    from edgekit.deps import require

    return require("yaml", "convert", "writing YAML recipes").safe_dump(data, sort_keys=False)
