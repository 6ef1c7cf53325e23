"""Checks of a manifest's JSON before anything is built from it.

A manifest comes from disk, possibly edited, truncated or written by someone else. Every key is
checked for presence and type; file names must stay inside the artifact's folder (no ``../``, no
absolute paths); sizes that would allocate gigabytes (an ``image.size`` of 30000x30000, an
``example_shape`` of billions of elements) are refused before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from edgekit.errors import ArtifactError
from edgekit.limits import MAX_IMAGE_PIXELS, MAX_TENSOR_ELEMENTS, check_elements

FIX = "re-run `edgekit convert` to write a new manifest, or delete it to load the bare model file"
# top-level key -> (expected type(s), how to say it, required)
KEYS: dict[str, tuple[type | tuple[type, ...], str, bool]] = {
    "artifact": (str, "a file name", True),
    "format": (str, "a format name", True),
    "precision": (str, "a precision name", True),
    "signature": (dict, "an object", True),
    "task": ((str, type(None)), "a task name or null", False),
    "files": (list, "a list of objects", False),
    "size_bytes": (int, "a number of bytes", False),
    "source": (dict, "an object", False),
    "options": (dict, "an object", False),
    "conversion": (dict, "an object", False),
    "versions": (dict, "an object", False),
    "verification": ((dict, type(None)), "an object or null", False),
    "preprocess": (dict, "an object", False),
    "runtime_hints": (dict, "an object", False),
    "recipe": ((dict, type(None)), "an object or null", False),
}


# preprocess keys that name files or folders beside the artifact (read by edgekit.tasks)
ASSET_KEYS: dict[str, str] = {"assets_dir": "the assets folder", "tokenizer": "the tokenizer file"}


def _bad(origin: str, problem: str, fix: str = FIX) -> ArtifactError:
    return ArtifactError(f"the manifest {origin} {problem}", fix=fix)


def _typed(origin: str, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        raise _bad(origin, f"is malformed: '{key}' should be {what}, not {type(value).__name__} {value!r:.40}")


def _inside(origin: str, key: str, name: str, *, plain: bool = False) -> None:
    """``name`` must be relative and stay in the artifact's folder (``plain``: no sub-folder either)."""
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    escapes = posix.is_absolute() or win.is_absolute() or bool(win.drive) or ".." in posix.parts \
        or ".." in win.parts or not name.strip()
    if escapes or (plain and len(win.parts) > 1):
        raise _bad(origin, f"names {key} {name!r}, which is outside the artifact's folder",
                   fix="a manifest names the files beside it by relative names inside its folder; edgekit does "
                   "not read files elsewhere: re-run `edgekit convert`, or fix the manifest")


def _spec(origin: str, where: str, spec: Any) -> None:
    _typed(origin, where, spec, dict, "an object")
    for key, kind, what in (("name", str, "a name"), ("dtype", str, "a dtype name"), ("shape", list, "a list")):
        if key not in spec:
            raise _bad(origin, f"is malformed: '{where}' has no '{key}'")
        _typed(origin, f"{where}.{key}", spec[key], kind, what)
    for i, d in enumerate(spec["shape"]):
        _typed(origin, f"{where}.shape.{i}", d, (int, str), "a size or an axis name")
    example = spec.get("example_shape")
    if example is not None:
        _typed(origin, f"{where}.example_shape", example, list, "a list of sizes")
        for i, d in enumerate(example):
            _typed(origin, f"{where}.example_shape.{i}", d, int, "a size")
        check_elements(example, f"the manifest {origin}: '{where}.example_shape'", ArtifactError, FIX)
    rng = spec.get("value_range")
    if rng is not None and (not isinstance(rng, list) or len(rng) != 2
                            or not all(isinstance(v, (int, float)) for v in rng)):
        raise _bad(origin, f"is malformed: '{where}.value_range' should be [low, high]")


def _image_size(origin: str, image: Any) -> None:
    if not isinstance(image, Mapping) or "size" not in image:
        return  # the task pipeline reports the details of a bad image spec
    size = image["size"]
    hw = [size, size] if isinstance(size, int) else size
    if not isinstance(hw, list) or len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                                          for s in hw):
        raise _bad(origin, f"is malformed: 'preprocess.image.size' should be [H, W], not {size!r:.40}")
    if hw[0] * hw[1] > MAX_IMAGE_PIXELS:
        raise _bad(origin, f"asks for images of {hw[0]}x{hw[1]} = {hw[0] * hw[1]:,} pixels, more than "
                   f"edgekit's limit of {MAX_IMAGE_PIXELS:,}",
                   fix="the model's input size is recorded at conversion: re-run `edgekit convert` with the "
                   "size the model takes")


def check_manifest(d: Any, origin: str) -> None:
    """Raise :class:`ArtifactError` naming the first key of ``d`` that a manifest cannot hold."""
    if not isinstance(d, dict):
        raise _bad(origin, f"is not a JSON object (it holds a {type(d).__name__})")
    for key, (kind, what, required) in KEYS.items():
        if key not in d:
            if required:
                raise _bad(origin, f"is malformed: it has no '{key}' key")
            continue
        _typed(origin, key, d[key], kind, what)
    _inside(origin, "the artifact", d["artifact"], plain=True)
    sig = d["signature"]
    for side in ("inputs", "outputs"):
        specs = sig.get(side, [])
        _typed(origin, f"signature.{side}", specs, list, "a list")
        for i, spec in enumerate(specs):
            _spec(origin, f"signature.{side}.{i}", spec)
    for i, entry in enumerate(d.get("files", [])):
        _typed(origin, f"files.{i}", entry, dict, "an object")
        _typed(origin, f"files.{i}.path", entry.get("path"), str, "a relative file name")
        _inside(origin, "the file", entry["path"])
        if entry.get("bytes") is not None:
            _typed(origin, f"files.{i}.bytes", entry["bytes"], int, "a number of bytes")
    pre = d.get("preprocess", {})
    for key, what in ASSET_KEYS.items():
        if pre.get(key) is not None:
            _typed(origin, f"preprocess.{key}", pre[key], str, "a relative name")
            _inside(origin, what, pre[key])
    _image_size(origin, pre.get("image"))


__all__ = ["MAX_TENSOR_ELEMENTS", "check_manifest"]
