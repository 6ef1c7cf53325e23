"""Parity of a converted artifact against the original PyTorch model.

Per output: max/mean absolute error, cosine similarity per sample (mean and worst), and top-1
agreement for logits. With evaluation data, the task metric from ``edgekit.evaluate`` (accuracy on
labelled data by default) and its delta.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.manifest import OutputParity, Verification
from edgekit.types import Precision

if TYPE_CHECKING:
    from edgekit.calib import EvalSet
    from edgekit.evaluate import Baseline, Evaluator
    from edgekit.sources import ModelSource

Feed = dict[str, np.ndarray]

# precision -> tolerance; only gated precisions fail a conversion, the others report figures
TOLERANCES: dict[Precision, dict[str, float]] = {
    Precision.FP32: {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.9999},
    # fp16 fails only when far off in value AND direction ("both"): a sanity gate, not a parity one
    Precision.FP16: {"atol": 1e-3, "rtol": 0.05, "min_cosine": 0.99, "both": 1.0},
}
# top-1 at a position whose original top two scores lie within 1% of its score range is a coin
# toss for any rounding: the int8 loop's top-1 target does not count it (top1_agreement_no_ties)
NEAR_TIE = 0.01
CLASSIFICATION_TASKS = {"text-classification", "image-classification", "token-classification",
                        "text-generation", "fill-mask"}


def eval_feeds(evaluation: EvalSet | None) -> list[Feed]:
    """The labelled data in the batches both the original and the artifact are run on."""
    from edgekit.evaluate import EvalData

    data = EvalData.of(evaluation)
    return data.batches() if data is not None else []


class LazyOutputs(Sequence):
    """The original's outputs on each feed, computed when read and never kept: a format that
    reads a few of them once (GGUF spills what it needs) holds one feed's outputs at a time."""

    def __init__(self, run: Callable[[Feed], dict[str, np.ndarray]], feeds: list[Feed]) -> None:
        self._run, self._feeds = run, feeds

    def __len__(self) -> int:
        return len(self._feeds)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        return self._run(self._feeds[i])


@dataclass(frozen=True)
class Reference:
    """Inputs and the original model's outputs on them, computed once per conversion (or, with
    ``keep_outputs=False``, each time one is read: :class:`LazyOutputs`)."""

    feeds: list[Feed]
    outputs: Sequence[dict[str, np.ndarray]]
    top1_outputs: frozenset[str]
    evaluation: EvalSet | None = None
    evaluator: Evaluator | None = None
    baseline: Baseline | None = None

    @classmethod
    def build(cls, source: ModelSource, feeds: list[Feed], evaluation: EvalSet | None = None,
              evaluator: Any = None, keep_outputs: bool = True) -> Reference:
        """``evaluator`` (a name, ``package.module:function`` or an Evaluator) scores the evaluation
        data; None means accuracy when the data is labelled. ``keep_outputs=False`` when no
        converter compares every output (:attr:`Converter.reference_outputs`): the outputs are then
        computed when read, so a causal LM's full-sequence logits on every sample are never held."""
        from edgekit.evaluate import EvalData, get_evaluator

        outs = [source.reference(f) for f in feeds] if keep_outputs else LazyOutputs(source.reference, feeds)
        top1 = frozenset(n for n in source.output_names
                         if n == "logits" or source.task in CLASSIFICATION_TASKS)
        data, ev, base = EvalData.of(evaluation), None, None
        if data is not None and (evaluator is not None or data.labels is not None):
            ev = get_evaluator("accuracy" if evaluator is None else evaluator, task=source.task,
                               has_labels=data.labels is not None)
        if ev is not None and data is not None and ev.scores_outputs:  # else the caller runs the artifact
            base = ev.baseline(source, data)
        return cls(feeds, outs, top1, evaluation, ev if base is not None else None, base)

    @property
    def eval_accuracy(self) -> float | None:
        """The original's score on the evaluation data (any metric; the name is historical)."""
        return self.baseline.value if self.baseline is not None else None

    @property
    def all_feeds(self) -> list[Feed]:
        """Every input the artifact must be run on: parity feeds, then evaluation batches."""
        return self.feeds + eval_feeds(self.evaluation)


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)


class ParityStats:
    """Parity statistics of one output gathered over batches of rows (one row = one sample or one
    position): max/mean absolute error, cosine per row, top-1 agreement.

    A value the artifact gives as NaN or infinity where the original's is finite is counted in
    ``non_finite`` and its row's cosine is -1: such an output never reads as a
    match (NaN compares false with every threshold, so unguarded statistics reported 0 error and
    cosine 1 for an all-NaN output). Elements non-finite in both are left out of the errors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.max_err, self.err_sum, self.count, self.non_finite = 0.0, 0.0, 0, 0
        self.cosines: list[np.ndarray] = []
        self.agree = self.positions = self.firm_agree = self.firm = 0

    def add(self, expected: np.ndarray, got: np.ndarray, hits: np.ndarray | None = None,
            firm: np.ndarray | None = None) -> None:
        """One batch: the original's and the artifact's output (rows along axis 0), and for logits
        the per-position top-1 ``hits`` and where the original is ``firm`` (not a near-tie)."""
        exp = _rows(expected)
        out = _rows(got).reshape(exp.shape)
        both = np.isfinite(exp) & np.isfinite(out)
        bad = np.isfinite(exp) & ~np.isfinite(out)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(np.where(both, exp - out, 0.0))
        self.max_err = max(self.max_err, float(err.max(initial=0.0)))
        self.err_sum, self.count = self.err_sum + float(err.sum()), self.count + int(both.sum())
        self.non_finite += int(bad.sum())
        e, g = np.where(both, exp, 0.0), np.where(both, out, 0.0)
        den = np.linalg.norm(e, axis=1) * np.linalg.norm(g, axis=1)
        cos = np.where(den > 0, (e * g).sum(1) / np.maximum(den, 1e-30), 1.0)
        self.cosines.append(np.where(bad.any(axis=1), -1.0, cos))
        if hits is None:
            return
        hit = np.asarray(hits, dtype=bool).reshape(-1)
        firm_at = np.ones_like(hit) if firm is None else np.asarray(firm, dtype=bool).reshape(-1)
        self.agree, self.positions = self.agree + int(hit.sum()), self.positions + int(hit.size)
        self.firm_agree, self.firm = self.firm_agree + int(hit[firm_at].sum()), self.firm + int(firm_at.sum())

    def result(self, top1: bool = False) -> OutputParity:
        cos = np.concatenate(self.cosines) if self.cosines else np.ones(1)
        return OutputParity(self.name, self.max_err, self.err_sum / max(self.count, 1), float(cos.mean()),
                            float(cos.min()),
                            self.agree / self.positions if top1 and self.positions else None,
                            self.firm_agree / self.firm if top1 and self.firm else None,
                            self.positions - self.firm if top1 else None, self.non_finite)


def output_parity(name: str, expected: list[np.ndarray], got: list[np.ndarray], top1: bool) -> OutputParity:
    """Statistics per feed, then aggregated: feeds may differ in shape (a sequence padded to the
    example's length, calibration padded to 128), so rows are never concatenated across feeds."""
    stats = ParityStats(name)
    for e, g in zip(expected, got):
        e, g = np.asarray(e), np.asarray(g)
        hits = firm = None
        if top1:  # at every position; a position the artifact gave non-finite scores is a miss
            hits = (e.argmax(-1) == g.argmax(-1)) & ~(np.isfinite(e) & ~np.isfinite(g)).any(-1)
            firm = ~near_ties(e)
        stats.add(e, g, hits, firm)
    return stats.result(top1)


def within_tolerance(p: OutputParity, precision: Precision, scale: float) -> bool:
    """Whether an output's parity passes ``precision``'s gate (``scale``: the original's largest
    absolute value). Non-finite values where the original is finite fail every precision; fp32
    must be close in value and direction; fp16 fails only when both are far off (a near-zero
    output may flip its sign within fp16's rounding); other precisions report figures."""
    if p.non_finite:
        return False
    tol = TOLERANCES.get(precision)
    if tol is None:
        return True
    far = p.max_abs_err > tol["atol"] + tol["rtol"] * scale
    turned = p.min_cosine < tol["min_cosine"]
    return not (far and turned) if tol.get("both") else not (far or turned)


def near_ties(scores: np.ndarray) -> np.ndarray:
    """Per position (every axis but the last): whether the original's top two scores differ by at
    most ``NEAR_TIE`` of that position's score range, so that any rounding may swap them."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape[-1] < 2:
        return np.zeros(s.shape[:-1], dtype=bool)
    top2 = np.partition(s, -2, axis=-1)[..., -2:]
    low = np.where(np.isfinite(s), s, np.inf).min(-1)  # a masked (-inf) score does not widen the range
    return top2[..., 1] - top2[..., 0] <= NEAR_TIE * (top2[..., 1] - low)


def _scale(expected: list[np.ndarray]) -> float:
    finite = [np.abs(e[np.isfinite(e)]) for e in map(np.asarray, expected)]
    return max((float(f.max()) for f in finite if f.size), default=0.0)


def compare(ref: Reference, got_all: list[dict[str, np.ndarray]], precision: Precision,
            device: str = "cpu") -> Verification:
    """Compare the artifact's outputs on ``ref.all_feeds`` (in order) with the original's."""
    got, eval_got = got_all[: len(ref.feeds)], got_all[len(ref.feeds):]
    parity = []
    tol = TOLERANCES.get(precision)
    failed: str | None = None
    for name in ref.outputs[0]:
        expected = [o[name] for o in ref.outputs]
        p = output_parity(name, expected, [g[name] for g in got], name in ref.top1_outputs)
        parity.append(p)
        if failed is None and not within_tolerance(p, precision, _scale(expected)):
            failed = name
    metric = None
    if ref.evaluator is not None and ref.baseline is not None:
        from edgekit.evaluate import EvalData

        metric = ref.evaluator.metric(eval_got, EvalData.of(ref.evaluation), ref.baseline)
    return Verification(
        samples=sum(len(next(iter(f.values()))) for f in ref.feeds),
        outputs=tuple(parity), passed=failed is None, gated=tol is not None or failed is not None,
        tolerance=dict(tol or {}), failed_output=failed, device=device, metric=metric)
