"""Refuse to serve a file that is not the one its manifest describes.

Every file the manifest lists (the model, OpenVINO's ``.bin``, the tokenizer in ``NAME.assets/``)
is hashed and compared with the recorded sha256 and size before the model is loaded.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import ArtifactError
from edgekit.manifest import Manifest, manifest_path


def verify_files(model_path: Path, manifest: Manifest | None) -> int:
    """Check every file ``manifest`` lists beside ``model_path``; returns how many were checked.

    Raises :class:`ArtifactError` naming the first file that is missing, of another size or of
    another sha256 (a modified, truncated or swapped file)."""
    from edgekit.fsutil import sha256_file

    if manifest is None:
        raise ArtifactError(f"{model_path.name} has no edgekit manifest, so its sha256 cannot be checked",
                            fix="convert the model with `edgekit convert` (it writes NAME.edgekit.json beside the "
                            "model) and copy both, or pass --allow-unverified to serve the bare file anyway")
    if not manifest.files:
        raise ArtifactError(f"{manifest_path(model_path).name} lists no files with their sha256",
                            fix="re-run `edgekit convert` with this edgekit version to write a full manifest")
    folder = model_path.parent
    for entry in manifest.files:
        path = folder / str(entry.get("path", ""))
        want, size = entry.get("sha256"), entry.get("bytes")
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in the manifest of {model_path.name} but is missing",
                                fix="copy the whole artifact (model, manifest and NAME.assets/) again")
        if size is not None and path.stat().st_size != int(size):
            raise ArtifactError(f"{path.name} is {path.stat().st_size:,} bytes, its manifest records {int(size):,}: "
                                "the file was modified or truncated", fix="copy the artifact again or re-convert it")
        if want and sha256_file(path) != want:
            raise ArtifactError(f"{path.name} does not match the sha256 in its manifest: the file was modified",
                                fix="copy the artifact again or re-convert it; edgekit serves only the files "
                                "the manifest describes")
    return len(manifest.files)
