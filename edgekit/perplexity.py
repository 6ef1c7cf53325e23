"""Language-model quality of a converted model against its original, on the same tokens.

Both models see identical token ids cut into identical windows; each window's next-token
predictions are scored: perplexity of each model, KL divergence of the candidate's next-token
distribution from the original's (mean, 99th percentile, max), and top-1 agreement. The same
figures llama.cpp's ``llama-perplexity --kl-divergence`` reports, here against PyTorch itself.

>>> from edgekit.perplexity import score, torch_logits  # doctest: +SKIP
>>> with edgekit.load("out/m-q4_k_m.gguf") as m:  # doctest: +SKIP
...     s = score(m.logits, tokens, window=512, reference=torch_logits(hf_model))
>>> s.perplexity - s.reference_perplexity  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LogitsFn = Callable[[np.ndarray], np.ndarray]  # token ids [n] -> logits [n, vocab]


# Logits (or log-probs) closer than this are a tie at f16's resolution: the f16 GGUF of a tiny
# random Llama differs from PyTorch by up to 0.013, so a reference top-2 gap below that cannot
# be told apart and a flip there is not a disagreement.
TIE_MARGIN = 0.02


def top1_agrees(reference: np.ndarray, got: np.ndarray, margin: float = TIE_MARGIN) -> np.ndarray:
    """Per position: the variant's argmax is the original's, or scores within ``margin`` of it there."""
    pick = np.asarray(got).argmax(-1)
    ref = np.asarray(reference)
    at_pick = np.take_along_axis(ref, pick[..., None], -1)[..., 0]
    return at_pick >= ref.max(-1) - margin


@dataclass(frozen=True)
class LMScore:
    """Next-token figures of a candidate model, and of the reference when one was given."""

    tokens: int  # scored predictions
    window: int
    perplexity: float
    reference_perplexity: float | None = None
    kl_mean: float | None = None  # KL(reference || candidate), nats per token
    kl_p99: float | None = None
    kl_max: float | None = None
    top1: float | None = None  # fraction of positions whose argmax matches the reference's

    @property
    def delta(self) -> float | None:
        return None if self.reference_perplexity is None else self.perplexity - self.reference_perplexity

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta}

    def to_metric(self, data: str | None = None) -> dict[str, Any]:
        """The manifest's ``verification.metric`` form (the keys the accuracy metric also uses)."""
        return {"name": "perplexity", "value": self.perplexity, "reference": self.reference_perplexity,
                "delta": self.delta, "samples": self.tokens, "window": self.window,
                "kl_mean": self.kl_mean, "kl_p99": self.kl_p99, "kl_max": self.kl_max, "top1": self.top1,
                "data": data}


def windows(tokens: Sequence[int] | np.ndarray, window: int) -> list[np.ndarray]:
    """Consecutive, non-overlapping windows of ``window`` tokens (a last short one if >= 2 tokens)."""
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
    out = [ids[i:i + window] for i in range(0, len(ids), window)]
    return [w for w in out if len(w) >= 2]


ROWS = 64  # positions scored at a time: float64 work arrays stay at ROWS x vocab


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def score(candidate: LogitsFn, tokens: Sequence[int] | np.ndarray, window: int = 512,
          reference: LogitsFn | None = None) -> LMScore:
    """Perplexity of ``candidate`` on ``tokens``; with ``reference``, also its perplexity, the KL
    divergence and top-1 agreement (position ``i`` predicts token ``i + 1`` within a window)."""
    nll, ref_nll, kls, agree = [], [], [], []
    for ids in windows(tokens, window):
        got = candidate(ids)
        ref = reference(ids) if reference is not None else None
        for start in range(0, len(ids) - 1, ROWS):
            stop = min(start + ROWS, len(ids) - 1)
            rows, targets = np.arange(stop - start), ids[start + 1:stop + 1]
            lp = log_softmax(got[start:stop])
            nll.append(-lp[rows, targets])
            if ref is None:
                continue
            rlp = log_softmax(ref[start:stop])
            ref_nll.append(-rlp[rows, targets])
            kls.append((np.exp(rlp) * (rlp - lp)).sum(-1))
            agree.append(top1_agrees(rlp, lp))
    if not nll:
        raise ValueError("need at least 2 tokens to score next-token predictions")
    all_nll = np.concatenate(nll)
    result = {"tokens": int(all_nll.size), "window": int(window), "perplexity": float(np.exp(all_nll.mean()))}
    if reference is not None:
        kl = np.maximum(np.concatenate(kls), 0.0)  # tiny negatives are rounding
        result.update(reference_perplexity=float(np.exp(np.concatenate(ref_nll).mean())),
                      kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)), kl_max=float(kl.max()),
                      top1=float(np.concatenate(agree).mean()))
    return LMScore(**result)


def torch_logits(model: Any) -> LogitsFn:
    """A Hugging Face causal LM as a :data:`LogitsFn` (float32 logits, inference mode)."""
    import torch

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)[None]))
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[0].float().numpy()

    return run


def cached(fn: LogitsFn) -> LogitsFn:
    """``fn`` remembering its answers: the reference is scored against several variants."""
    memo: dict[bytes, np.ndarray] = {}

    def run(ids: np.ndarray) -> np.ndarray:
        key = np.asarray(ids, dtype=np.int64).tobytes()
        if key not in memo:
            memo[key] = fn(ids)
        return memo[key]

    return run


def real_tokens(feeds: Iterable[dict[str, np.ndarray]]) -> np.ndarray:
    """The non-padding token ids of every row of every feed, concatenated in order."""
    parts = []
    for feed in feeds:
        ids = np.asarray(feed["input_ids"])
        mask = np.asarray(feed.get("attention_mask", np.ones_like(ids)))
        parts += [row[m.astype(bool)] for row, m in zip(ids.reshape(len(ids), -1), mask.reshape(len(ids), -1))]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
