"""Accuracy-aware static int8 for every format: after a static int8 variant is built and verified,
keep its most sensitive layers in float, one more per step, until it meets its target.

The target is a figure of the verification edgekit already runs: the task metric's drop on
``--eval`` data when ``max_accuracy_drop`` is set; else, with labelled ``--eval`` data scored by
accuracy and no ``int8_target``, the accuracy drop on that data (at most ``DEFAULT_DROP``, one
point); else the top-1 agreement with the original for classifier outputs (default 0.98), else the
worst per-sample cosine (default 0.99); ``int8_target`` overrides these defaults. Top-1 agreement is
counted where the original's top two scores are not a near-tie (within 1% of the position's score
range, ``edgekit.verify.NEAR_TIE``): the ~34 verification samples would otherwise let one swapped
coin toss (one sample = 3 points) mark a variant degraded. The layers are ranked once by
:func:`edgekit.optimize.sensitivity.sensitivity` on the verification's own inputs; each step rebuilds
from the converter's exported base with one more layer in ``exclude_layers`` (no re-export) until
the target is met, ``int8_max_exclusions`` layers are tried or no layer is left; a layer whose
float weights would make the variant outgrow ``int8_max_size_ratio`` times the plain int8 size is
skipped (recorded), and the next, smaller one tried. Every step is recorded in the manifest
(``conversion.accuracy_loop``); a variant that ends short of its target is ``degraded``.

>>> edgekit.convert(net, (x,), targets=["onnx"], precisions=["int8"], calib="c.npz",
...                 options={"onnx": {"int8_target": 0.99}})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import ConfigError, EdgekitError

if TYPE_CHECKING:
    from edgekit.converters import BuildContext, Built, Converter
    from edgekit.manifest import Verification
    from edgekit.verify import Reference

DEFAULT_TOP1 = 0.98  # classifiers: top-1 agreement with the original
DEFAULT_COSINE = 0.99  # other outputs: worst per-sample cosine to the original
DEFAULT_DROP = 0.01  # with labelled --eval data (accuracy): at most one point below the original


@dataclass(frozen=True)
class AccuracyOptions:
    """Options of the accuracy-aware int8 loop, shared by every converter with static int8
    (``-O int8_target=0.99`` applies to every target, ``-O onnx.int8_loop=false`` to one)."""

    int8_loop: bool = True  # static int8: keep sensitive layers in float until the target is met
    int8_target: float | None = None  # None: top-1 agreement 0.98 (classifiers), else worst cosine 0.99
    int8_max_exclusions: int = 8  # at most this many layers kept in float by the loop
    int8_max_size_ratio: float = 1.5  # skip a layer whose float weights outgrow this x the plain int8 size
    # with labelled data (--eval): the largest task-metric drop allowed (0.01 = one accuracy point)
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        if self.int8_target is not None and not -1.0 <= self.int8_target <= 1.0:
            raise ConfigError(f"int8_target must lie in [-1, 1], got {self.int8_target}",
                              fix="e.g. -O int8_target=0.98 (top-1 agreement or worst cosine)")
        if self.int8_max_exclusions < 0:
            raise ConfigError("int8_max_exclusions must be >= 0", fix="e.g. -O int8_max_exclusions=8")
        if self.int8_max_size_ratio < 1.0:
            raise ConfigError(f"int8_max_size_ratio must be >= 1, got {self.int8_max_size_ratio}",
                              fix="e.g. -O int8_max_size_ratio=1.5")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise ConfigError(f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}",
                              fix="use e.g. 0.01 (one accuracy point)")


@dataclass(frozen=True)
class Goal:
    """What a static int8 variant must reach: ``figure`` (top1, cosine or metric_drop) vs ``target``."""

    figure: str
    target: float

    @classmethod
    def of(cls, opts: Any, verification: Verification, reference: Reference) -> Goal:
        if opts.max_accuracy_drop is not None:
            if reference.evaluator is None:
                raise ConfigError(f"max_accuracy_drop={opts.max_accuracy_drop} needs labelled evaluation data",
                                  fix="pass --eval data.npz (the inputs plus 'labels'), or use -O int8_target")
            return cls("metric_drop", float(opts.max_accuracy_drop))
        metric = verification.metric or {}
        if opts.int8_target is None and metric.get("name") == "accuracy":  # labelled --eval data, not ~34 samples
            return cls("metric_drop", DEFAULT_DROP)
        top1 = any(o.top1_agreement is not None for o in verification.outputs)
        default = DEFAULT_TOP1 if top1 else DEFAULT_COSINE
        return cls("top1" if top1 else "cosine", default if opts.int8_target is None else float(opts.int8_target))

    def value(self, v: Verification, reference: Reference) -> float:
        if self.figure == "metric_drop":
            m = v.metric or {}
            return float(reference.evaluator.drop(float(m["value"]), float(m["reference"])))
        if self.figure == "top1":  # near-ties not counted (all positions when every one is a tie)
            return min(o.top1_agreement if o.top1_agreement_no_ties is None else o.top1_agreement_no_ties
                       for o in v.outputs if o.top1_agreement is not None)
        return min(o.min_cosine for o in v.outputs)

    def met(self, value: float) -> bool:
        return value <= self.target if self.figure == "metric_drop" else value >= self.target

    def describe(self) -> str:
        return {"metric_drop": f"task-metric drop <= {self.target:g}", "top1": f"top-1 agreement >= {self.target:g}",
                "cosine": f"worst cosine >= {self.target:g}"}[self.figure]


@dataclass
class Outcome:
    """The variant the loop settled on, its verification, and the record for the manifest."""

    built: Built
    verification: Verification
    met: bool
    record: dict[str, Any] = field(default_factory=dict)
    native: Any = None  # the signature of ``built`` when the loop verified it

    @property
    def reason(self) -> str:
        """Why the variant is degraded, with the figures and the fix (for the table and the CLI)."""
        r = self.record
        kept = ", ".join(r.get("excluded") or []) or "none"
        return (f"{r['goal']} not met: {r['value']:.4g} with layers kept in float: {kept} ({r['stopped']}); "
                "fix: raise -O int8_max_exclusions or -O int8_max_size_ratio, give more representative "
                "--calib data, or use int8-dynamic / fp16 for this model")


Verify = Callable[["Built"], "tuple[Verification, Any]"]


def refine(conv: Converter, base: Any, stem: str, ctx: BuildContext, reference: Reference,
           built: Built, verification: Verification, verify: Verify) -> Outcome:
    """Run the loop on a verified static int8 variant; see the module docstring."""
    from edgekit.types import Precision
    from edgekit.verify import NEAR_TIE

    opts = ctx.options
    goal = Goal.of(opts, verification, reference)
    size0 = _size(built)
    first = goal.value(verification, reference)
    steps: list[dict[str, Any]] = [{"excluded": list(opts.exclude_layers), "value": first, "size_bytes": size0}]
    record: dict[str, Any] = {"goal": goal.describe(), "figure": goal.figure, "target": goal.target, "steps": steps}
    if goal.figure == "top1":
        record["near_ties"] = f"not counted (top two scores within {NEAR_TIE:.0%} of the score range)"
    if goal.met(first) or not opts.int8_loop:
        record.update(met=goal.met(first), value=first, excluded=list(opts.exclude_layers),
                      stopped="met" if goal.met(first) else "loop off (-O int8_loop=false)")
        return Outcome(built, verification, goal.met(first), record)
    ranked = _ranking(ctx, reference, exclude=set(opts.exclude_layers))
    record["ranking"] = ranked[: max(opts.int8_max_exclusions * 2, 8)]
    excluded = list(opts.exclude_layers)
    best = Outcome(built, verification, False, record)
    best_value, stopped = first, "no layer left to exclude"
    tried = 0
    for layer in ranked:
        if tried >= opts.int8_max_exclusions:
            stopped = f"int8_max_exclusions={opts.int8_max_exclusions} reached"
            break
        tried += 1
        candidate = [*excluded, layer]
        step_ctx = replace(ctx, workdir=_step_dir(ctx.workdir, tried))
        try:
            new_base = conv.with_exclusions(base, candidate, step_ctx)
            new_built = conv.build(new_base, Precision.INT8, stem, step_ctx)
        except EdgekitError as e:  # the backend cannot keep this layer apart: record it, go on
            steps.append({"excluded": candidate, "error": e.problem})
            continue
        size = _size(new_built)
        if size > opts.int8_max_size_ratio * size0:  # too big in float: skip it, a smaller layer may do
            steps.append({"excluded": candidate, "size_bytes": size, "error": "over the size budget"})
            stopped = f"no layer left within int8_max_size_ratio={opts.int8_max_size_ratio:g}"
            continue
        v, native = verify(new_built)
        value = goal.value(v, reference)
        steps.append({"excluded": candidate, "value": value, "size_bytes": size,
                      "exclusions": new_built.details.get("exclusions")})
        excluded = candidate
        if _better(goal, value, best_value):
            best, best_value = Outcome(new_built, v, False, record, native), value
        if goal.met(value):
            best, stopped = Outcome(new_built, v, True, record, native), "met"
            break
    record.update(met=best.met, stopped=stopped, value=best_value,
                  excluded=best.built.details.get("exclusions", {}).get("applied", []))
    return best


def _better(goal: Goal, value: float, than: float) -> bool:
    return value < than if goal.figure == "metric_drop" else value > than


def _size(built: Built) -> int:
    return sum(f.stat().st_size for f in built.files)


def _step_dir(workdir: Path, step: int) -> Path:
    path = workdir / f"int8-loop-{step}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ranking(ctx: BuildContext, reference: Reference, exclude: set[str]) -> list[str]:
    """Layers most sensitive to int8 first, measured on the verification's own inputs (and task
    metric, when there is labelled data)."""
    from edgekit.optimize.sensitivity import sensitivity

    report = sensitivity(ctx.source, data=list(reference.feeds[1:]), eval=reference.evaluation,
                         metric=reference.evaluator if reference.evaluator is not None else None)
    return [r.name for r in report.rows if r.name not in exclude]
