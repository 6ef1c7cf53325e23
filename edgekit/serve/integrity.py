"""Refuse to serve a file that is not the one its manifest describes.

Every file the manifest lists (the model, OpenVINO's ``.bin``, the tokenizer in ``NAME.assets/``)
must be present with the recorded size and sha256 (:func:`edgekit.integrity.check_integrity`, whose
hashes are cached per file identity); a file without a manifest is refused unless the caller
allows unverified files.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import ArtifactError
from edgekit.manifest import Manifest, manifest_path


def verify_files(model_path: Path, manifest: Manifest | None) -> int:
    """Check every file ``manifest`` lists beside ``model_path``, assets included; returns how many
    were checked. Raises :class:`ArtifactError` naming the first file missing, resized or modified."""
    from edgekit.integrity import check_integrity

    if manifest is None:
        raise ArtifactError(f"{model_path.name} has no edgekit manifest, so its sha256 cannot be checked",
                            fix="convert the model with `edgekit convert` (it writes NAME.edgekit.json beside the "
                            "model) and copy both, or pass --allow-unverified to serve the bare file anyway")
    if not manifest.files:
        raise ArtifactError(f"{manifest_path(model_path).name} lists no files with their sha256",
                            fix="re-run `edgekit convert` with this edgekit version to write a full manifest")
    return check_integrity(model_path, manifest, require_all=True)
