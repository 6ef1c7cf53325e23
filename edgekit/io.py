"""Reading and writing user data files (``.npz``) with errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import ArtifactError, ConfigError, EdgekitError, InputError


def read_npz(path: Path, *, error: type[EdgekitError] = InputError, option: str = "--input"
             ) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` by key; never unpickles objects. ``error`` is raised for bad content."""
    if not path.is_file():
        raise ArtifactError(f"no such data file: {path}", fix=f"check the {option} path")
    import zipfile

    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise error(f"cannot read {path} as an .npz file: {e}",
                    fix="save it with numpy.savez(path, input_name=array, ...)") from e
    if isinstance(loaded, np.ndarray):  # a bare .npy array: no input name to feed it to
        raise error(f"{path} holds one bare array, not arrays keyed by input name",
                    fix="save it with numpy.savez(path, x=array), naming the model input")
    try:
        with loaded as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise error(f"cannot read {path} as an .npz file: {e}",
                    fix="save it with numpy.savez(path, input_name=array, ...)") from e


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays atomically (temp file in the same directory, then rename)."""
    import os
    import tempfile

    other = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
    if other:
        kinds = ", ".join(f"{n!r} ({type(arrays[n]).__name__})" for n in other)
        raise ConfigError(f"output(s) {kinds} are not arrays (ONNX sequence or map outputs) and cannot be saved "
                          "to an .npz", fix="print them with --json instead of --output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror or e}",
                            fix="choose an --output path in a folder you can write to") from e
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
