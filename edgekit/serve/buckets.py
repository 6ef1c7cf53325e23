"""Padding-aware grouping of a gathered text batch.

A text batch is padded to its longest row: sixteen sentences of 11 to 25 tokens cost 400 padded
tokens for 330 real ones. :func:`regroup` orders the rows by length and cuts them into the runs
that minimise ``CALL_TOKENS * calls + padded tokens`` (one model call costs about as much as
``CALL_TOKENS`` more padded tokens; measured on MiniLM-L6 int8, docs/serving.md), each run trimmed
to its own longest row. Only the padding columns a run does not need are dropped, so every run is
exactly what the tokenizer gives those texts padded to their longest; answers are put back in
request order by the caller (:func:`restore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CALL_TOKENS = 16  # a model call's fixed cost, in padded tokens (x10-x20 measured, see the docstring)
MIN_ROWS = 4  # below this a batch is not worth regrouping


def plan(lengths: Sequence[int], call_tokens: int = CALL_TOKENS) -> list[int]:
    """Cut points (exclusive ends) of the cheapest split of rows sorted by length: minimises
    ``call_tokens * runs + sum(rows * longest)`` over contiguous runs (O(n^2), n <= max batch)."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest split of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows i..j-1 as one run, padded to lengths[j-1] (the longest: sorted)
            cost = best[i] + call_tokens + (j - i) * lengths[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    ends, j = [], n
    while j > 0:
        ends.append(j)
        j = cut[j]
    return ends[::-1]


def regroup(prepared: Any, call_tokens: int = CALL_TOKENS) -> tuple[Any, np.ndarray] | None:
    """``prepared`` (one padded text batch) as length runs, and the order of its rows; None when
    there is nothing to gain (one run) or the batch is not a right-padded token batch."""
    if len(prepared.feeds) != 1 or prepared.rows[0] < MIN_ROWS:
        return None
    feed = prepared.feeds[0]
    mask = feed.get("attention_mask")
    if mask is None or mask.ndim != 2 or any(v.shape != mask.shape for v in feed.values()):
        return None
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    ranked = [int(x) for x in lengths[order]]
    ends = plan(ranked, call_tokens)
    if len(ends) == 1:
        return None
    feeds, rows, start = [], [], 0
    for end in ends:
        idx, longest = order[start:end], max(ranked[end - 1], 1)
        if int(mask[idx, :longest].sum()) != sum(ranked[start:end]):  # a 1 past the cut: not right-padded
            return None
        feeds.append({k: np.ascontiguousarray(v[idx, :longest]) for k, v in feed.items()})
        rows.append(end - start)
        start = end
    extras = [f["attention_mask"] for f in feeds] if prepared.extras else []
    return type(prepared)(feeds, rows, extras), order


def restore(answers: Any, order: np.ndarray) -> Any:
    """Answers computed in ``order`` (rows sorted by length) back in the original row order."""
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    if isinstance(answers, np.ndarray):
        return answers[back]
    return [answers[i] for i in back]
