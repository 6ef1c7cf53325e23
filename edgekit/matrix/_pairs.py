"""Speed ratios that a load burst cannot inflate: eager and artifact timed in interleaved pairs,
the ratio the median of the per-pair ratios, and a row flagged ``noisy`` when the eager timings of
its pairs disagree by more than :data:`NOISY_SPREAD` (then no ratio from that moment is trustworthy).

One eager figure timed during a burst once made an artifact look 1756x faster than PyTorch
(102 ms instead of 0.14 ms); with three pairs that burst is one pair out of three, and the spread
of the eager figures (700x) says the machine was not quiet.

>>> paired_ratio([0.14, 102.0, 0.15], [0.10, 0.11, 0.10]).ratio
1.5
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PAIRS = 3  # eager/artifact pairs per row; the median of three survives one burst
NOISY_SPREAD = 2.0  # max/min of the pairs' eager p50s above which a row is flagged noisy


@dataclass(frozen=True)
class PairedRatio:
    """The eager/artifact pairs of one row and what they say."""

    pairs: list[tuple[float, float]]  # (eager p50 ms, artifact p50 ms), in the order timed
    ratio: float | None  # median of eager / artifact over the pairs; above 1 is faster than eager
    spread: float | None  # max / min of the eager p50s
    noisy: bool

    @property
    def eager_p50_ms(self) -> float | None:
        return statistics.median(e for e, _ in self.pairs) if self.pairs else None

    @property
    def artifact_p50_ms(self) -> float | None:
        return statistics.median(a for _, a in self.pairs) if self.pairs else None


def paired_ratio(eager: Sequence[float | None], artifact: Sequence[float | None],
                 noisy_spread: float = NOISY_SPREAD) -> PairedRatio:
    """Combine per-pair p50s (a pair with a missing or zero figure is dropped)."""
    pairs = [(float(e), float(a)) for e, a in zip(eager, artifact) if e and a]
    if not pairs:
        return PairedRatio([], None, None, False)
    ratio = round(statistics.median(e / a for e, a in pairs), 4)
    eagers = [e for e, _ in pairs]
    spread = max(eagers) / min(eagers)
    return PairedRatio(pairs, ratio, round(spread, 3), spread > noisy_spread)


def time_pairs(time_eager: Callable[[], float | None], time_artifact: Callable[[], float | None],
               pairs: int = PAIRS) -> PairedRatio:
    """Call eager then artifact ``pairs`` times (each returns its p50 in ms, or None when it failed);
    stops at the first failed artifact timing."""
    eager: list[float | None] = []
    artifact: list[float | None] = []
    for _ in range(pairs):
        eager.append(time_eager())
        got = time_artifact()
        artifact.append(got)
        if got is None:
            break
    return paired_ratio(eager, artifact)
