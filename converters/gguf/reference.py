"""PyTorch's logits for GGUF verification, computed once per conversion, one window at a time.

Every logits array verification compares against (the real positions of the parity rows, and each
perplexity window of the evaluation tokens) is computed by the PyTorch model before llama.cpp loads
any file, written to a scratch file in the work directory, and read back one array at a time while
llama.cpp runs. So at no point are all the logits in memory (SmolLM2's 1024 evaluation tokens x
49152 would be 200 MB), the PyTorch model runs once per conversion whatever the number of
precisions, and it is idle while llama.cpp verifies: its memory-mapped weights are handed back
(:func:`edgekit.sources.pages.drop_mapped_pages`) before llama.cpp maps the GGUF file beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgekit.verify import Reference

LogitsFn = Callable[[np.ndarray], np.ndarray]


class SpilledLogits:
    """float32 arrays appended to one scratch file, read back one at a time by key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._index: dict[Any, tuple[int, tuple[int, ...]]] = {}
        self._size = 0
        path.write_bytes(b"")

    def add(self, key: Any, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=np.float32)
        with open(self.path, "ab") as f:
            f.write(data.tobytes())
        self._index[key] = (self._size, data.shape)
        self._size += data.nbytes

    def get(self, key: Any) -> np.ndarray:
        offset, shape = self._index[key]
        return np.fromfile(self.path, dtype=np.float32, count=int(np.prod(shape)), offset=offset).reshape(shape)

    def __contains__(self, key: Any) -> bool:
        return key in self._index

    @property
    def nbytes(self) -> int:
        """Bytes on disk: every array written."""
        return self._size


def parity_rows(reference: Reference, max_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(feed, row, real-position mask) of the first ``max_rows`` rows with a real token, in order."""
    rows = 0
    for i, feed in enumerate(reference.feeds):
        ids = np.asarray(feed["input_ids"])
        mask = np.asarray(feed.get("attention_mask", np.ones_like(ids))).astype(bool)
        for row in range(ids.shape[0]):
            if rows >= max_rows:
                return
            if mask[row].any():
                rows += 1
                yield i, row, mask[row]


def spill_reference(store: SpilledLogits, reference: Reference, max_rows: int, windows: list[np.ndarray],
                    logits: LogitsFn) -> None:
    """PyTorch's logits at the real positions of the parity rows (from the reference feeds run as
    batches, as the generic check runs them) and on each evaluation window, into ``store``."""
    done: dict[int, dict[str, np.ndarray]] = {}
    for i, row, real in parity_rows(reference, max_rows):
        if ("row", i, row) in store:
            continue
        if i not in done:
            done.clear()  # one feed's outputs at a time
            done[i] = reference.outputs[i]
        store.add(("row", i, row), np.asarray(done[i]["logits"][row][real]))
    done.clear()
    for ids in windows:
        key = ("window", np.asarray(ids, dtype=np.int64).tobytes())
        if key not in store:
            store.add(key, logits(ids))


def window_reader(store: SpilledLogits) -> LogitsFn:
    """The spilled PyTorch logits of an evaluation window, as :func:`edgekit.perplexity.score`'s reference."""
    return lambda ids: store.get(("window", np.asarray(ids, dtype=np.int64).tobytes()))
