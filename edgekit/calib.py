"""Calibration and evaluation data: ``.npz`` keyed by input name, or text for HF text models.

Arrays are stacked along the model's batch axis: ``calib["input_ids"]`` has shape ``(N, seq)``
for an input of shape ``(batch, sequence)``. Text files hold one sample per line; JSONL files
one object per line with a ``"text"`` field. An ``.npz`` for evaluation also holds ``labels``;
JSONL evaluation data for a text classifier gives each line a ``"label"`` (an ``id2label`` name
or an integer id).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ArtifactError, CalibrationError
from edgekit.io import read_npz

if TYPE_CHECKING:
    from edgekit.sources import ModelSource

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
LABEL_KEYS = ("labels", "label")


@dataclass(frozen=True)
class CalibrationSet:
    """Samples stacked on axis 0, one array per model input."""

    arrays: dict[str, np.ndarray]
    origin: str

    @property
    def size(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.size, batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.arrays.items()}

    def take(self, n: int) -> CalibrationSet:
        return CalibrationSet({k: v[:n] for k, v in self.arrays.items()}, self.origin)


@dataclass(frozen=True)
class EvalSet:
    """Labelled inputs for a task metric (accuracy) measured after each conversion."""

    data: CalibrationSet
    labels: np.ndarray


def _json_lines(path: Path, example: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a JSONL file."""
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}:{i} is not valid JSON: {e}",
                                   fix=f"write one object per line: {example}") from e


def _read_texts(path: Path) -> list[str]:
    texts: list[str] = []
    if path.suffix in (".jsonl", ".json"):
        for i, obj in _json_lines(path, '{"text": "..."}'):
            text = obj.get("text") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise CalibrationError(f'{path}:{i} has no "text" string',
                                       fix='write one object per line: {"text": "..."}')
            texts.append(text)
    else:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise CalibrationError(f"{path} holds no text samples", fix="add one sample per line")
    return texts


def check_data_files(*, calib: str | Path | None = None, eval_data: str | Path | None = None) -> None:
    """Check ``--calib`` and ``--eval`` paths before the (slow) source is loaded or trained: the file
    exists, is a file, has a suffix edgekit reads, and an ``.npz`` opens (keys listed, not read)."""
    import zipfile

    for value, option in ((calib, "--calib"), (eval_data, "--eval")):
        if value is None:
            continue
        path = Path(value)
        if path.is_dir():
            raise ArtifactError(f"{path} is a directory, not a data file",
                                fix=f"pass a file to {option}: .npz keyed by input name, or .txt/.jsonl text")
        if not path.is_file():
            raise ArtifactError(f"no such data file: {path}", fix=f"check the {option} path")
        if path.suffix in TEXT_SUFFIXES:
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                z.files  # noqa: B018 - reads the zip directory only
        except (OSError, ValueError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as e:
            if path.suffix != ".npz":
                raise CalibrationError(
                    f"{path}: edgekit reads .npz, .txt, .jsonl or .json data, not {path.suffix!r}",
                    fix=f"save {option} data with numpy.savez(path, input_name=array, ...), or as text") from e
            raise CalibrationError(f"cannot read {path} as an .npz file: {e}",
                                   fix=f"save {option} data with numpy.savez(path, input_name=array, ...)") from e


def validate(arrays: dict[str, np.ndarray], source: ModelSource, origin: str) -> CalibrationSet:
    """Check names, ranks, fixed dims and dtypes against the source's example inputs."""
    expected = source.input_names
    missing = [n for n in expected if n not in arrays]
    unknown = [n for n in arrays if n not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if unknown:
            parts.append(f"unknown key(s) {unknown}")
        raise CalibrationError(f"{origin}: " + " and ".join(parts),
                               fix=f"key the arrays by the model's input names: {expected}")
    out: dict[str, np.ndarray] = {}
    sizes = set()
    for name in expected:
        arr, ex = np.asarray(arrays[name]), source.example_inputs[name]
        dynamic = source.dynamic_axes.get(name, {})
        want = ["N" if i == 0 else (dynamic[i] if i in dynamic else int(s))
                for i, s in enumerate(ex.shape)]
        bad_rank = arr.ndim != ex.ndim
        bad_dim = not bad_rank and any(
            i not in dynamic and i != 0 and arr.shape[i] != ex.shape[i] for i in range(ex.ndim))
        if bad_rank or bad_dim:
            raise CalibrationError(
                f"{origin}: input {name!r} has shape {list(arr.shape)}, expected {want} "
                "(samples stacked on axis 0)",
                fix=f"reshape {name!r} to {want}")
        if arr.dtype != ex.dtype:
            if arr.dtype.kind != ex.dtype.kind and not (arr.dtype.kind in "iu" and ex.dtype.kind in "iu"):
                raise CalibrationError(f"{origin}: input {name!r} is {arr.dtype}, the model takes {ex.dtype}",
                                       fix=f"save {name!r} as {ex.dtype}")
            arr = arr.astype(ex.dtype)
        sizes.add(arr.shape[0])
        out[name] = arr
    if len(sizes) > 1:
        raise CalibrationError(f"{origin}: inputs hold different sample counts {sorted(sizes)}",
                               fix="stack the same number of samples for every input")
    if 0 in sizes:
        raise CalibrationError(f"{origin}: holds no samples", fix="add at least one sample")
    return CalibrationSet(out, origin)


def examples_like(source: ModelSource, data: CalibrationSet | None) -> ModelSource:
    """An image model's examples at the size of its calibration data, when that differs on a
    dynamic height/width axis: the example size of a folder without ``preprocessor_config.json``
    is a guess, and a format that exports fixed shapes (TFLite) must export the size the data has."""
    import dataclasses

    if data is None or source.task != "image-classification":
        return source
    for name, arr in source.example_inputs.items():
        spatial = [a for a in source.dynamic_axes.get(name, {}) if a != 0]
        got = data.arrays.get(name)
        if got is not None and spatial and any(got.shape[a] != arr.shape[a] for a in spatial):
            count = min(2, data.size)
            return dataclasses.replace(source, example_inputs={k: v[:count] for k, v in data.arrays.items()})
    return source


def load_calibration(path: str | Path, source: ModelSource, *, limit: int | None = None
                     ) -> CalibrationSet:
    """Read ``path`` (.npz, or text/JSONL for a HF text model) as calibration samples."""
    path = Path(path)
    if path.suffix in TEXT_SUFFIXES:
        if not path.is_file():
            raise ArtifactError(f"no such data file: {path}", fix="check the --calib path")
        if source.tokenize is None:
            raise CalibrationError(
                f"{path.name} is text, but this model has no tokenizer to encode it",
                fix="pass an .npz keyed by input name, or a Hugging Face text model with its tokenizer")
        texts = _read_texts(path)[:limit] if limit else _read_texts(path)
        arrays = source.tokenize(texts)
    else:
        raw = read_npz(path, error=CalibrationError, option="--calib")
        arrays = {k: v for k, v in raw.items() if k not in LABEL_KEYS}
    cal = validate(arrays, source, path.name)
    return cal.take(limit) if limit else cal


def load_eval(path: str | Path, source: ModelSource) -> EvalSet:
    """Read labelled evaluation data: an .npz with the inputs plus ``labels``, or for a text model
    with a tokenizer a .jsonl with ``{"text": "...", "label": "earn"}`` per line (label names are
    mapped through the model's ``id2label``; integer ids are taken as they are)."""
    path = Path(path)
    if path.suffix in TEXT_SUFFIXES:
        return _load_text_eval(path, source)
    raw = read_npz(path, error=CalibrationError, option="--eval")
    key = next((k for k in LABEL_KEYS if k in raw), None)
    if key is None:
        raise CalibrationError(f"{path.name} has no 'labels' array",
                               fix="save integer class labels under the key 'labels'")
    labels = raw.pop(key)
    data = validate(raw, source, path.name)
    if len(labels) != data.size:
        raise CalibrationError(f"{path.name}: {len(labels)} labels for {data.size} samples",
                               fix="give one label per sample")
    return EvalSet(data, labels.astype(np.int64))


LABELLED_EXAMPLE = '{"text": "...", "label": "name or id"}'


def _load_text_eval(path: Path, source: ModelSource) -> EvalSet:
    if not path.is_file():
        raise ArtifactError(f"no such data file: {path}", fix="check the --eval path")
    if path.suffix == ".txt":
        raise CalibrationError(f"{path.name} is plain text, which holds no labels",
                               fix=f"write JSONL, one {LABELLED_EXAMPLE} per line, or an .npz with the "
                               "inputs and 'labels'")
    if source.tokenize is None:
        raise CalibrationError(f"{path.name} is text, but this model has no tokenizer to encode it",
                               fix="pass an .npz with the inputs and 'labels', or a Hugging Face text "
                               "model with its tokenizer")
    texts: list[str] = []
    labels: list[tuple[int, Any]] = []
    for i, obj in _json_lines(path, LABELLED_EXAMPLE):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or "label" not in obj:
            raise CalibrationError(f'{path}:{i} needs a "text" string and a "label"',
                                   fix=f"write one object per line: {LABELLED_EXAMPLE}")
        texts.append(obj["text"])
        labels.append((i, obj["label"]))
    if not texts:
        raise CalibrationError(f"{path} holds no samples", fix=f"add one {LABELLED_EXAMPLE} per line")
    ids = _label_ids(labels, source.preprocess.get("id2label") or {}, path)
    return EvalSet(validate(source.tokenize(texts), source, path.name), ids)


def _label_ids(labels: list[tuple[int, Any]], id2label: dict[str, str], path: Path) -> np.ndarray:
    """Label names (through the inverse of ``id2label``) or integer ids -> class ids."""
    by_name = {str(name): int(i) for i, name in id2label.items()}
    known = ", ".join(repr(n) for n in by_name) or "none (the model has no id2label)"
    ids = []
    for line, label in labels:
        if isinstance(label, str) and label in by_name:
            ids.append(by_name[label])
        elif isinstance(label, int) and not isinstance(label, bool) and (
                not id2label or str(label) in id2label):
            ids.append(label)
        else:
            what = f"label id {label}" if isinstance(label, int) and not isinstance(label, bool) \
                else f"label {label!r}"
            raise CalibrationError(f"{path}:{line}: {what} is not one of the model's labels",
                                   fix=f"use a label name or its integer id; the labels are: {known}")
    return np.asarray(ids, dtype=np.int64)
