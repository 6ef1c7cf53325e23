"""The manifest: one schema-versioned ``<artifact file>.edgekit.json`` beside each artifact.

It records what the artifact is (format, precision, signature), where it came from (source and
weight hashes, options, tool versions), how well it matched the original (verification, size),
and what a runtime needs around it (tokenizer files, labels).
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError
from edgekit.types import Format, Precision, Signature

SCHEMA = "edgekit.manifest/1"
SUFFIX = ".edgekit.json"


@dataclass(frozen=True)
class OutputParity:
    """How one output of the artifact compares with the original model's."""

    name: str
    max_abs_err: float
    mean_abs_err: float
    cosine: float
    min_cosine: float
    top1_agreement: float | None = None
    # top-1 agreement where the original's top two scores are not a near-tie (edgekit.verify.NEAR_TIE),
    # and how many positions were near-ties
    top1_agreement_no_ties: float | None = None
    near_ties: int | None = None
    # values the artifact gave as NaN or infinity where the original's were finite (fails any gate)
    non_finite: int = 0


@dataclass(frozen=True)
class Verification:
    """Parity of an artifact against the original, on ``samples`` real or example inputs."""

    samples: int
    outputs: tuple[OutputParity, ...]
    passed: bool
    # True when failing makes the conversion fail (fp32; fp16's sanity gate; NaN/inf outputs in any
    # precision); else figures are reported
    gated: bool
    tolerance: dict[str, float] = field(default_factory=dict)
    failed_output: str | None = None
    device: str = "cpu"
    metric: dict[str, Any] | None = None  # task metric on labelled data, e.g. accuracy and delta

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verification:
        outs = tuple(OutputParity(**o) for o in d.get("outputs", []))
        return cls(**{**d, "outputs": outs})

    def worst(self) -> OutputParity | None:
        return min(self.outputs, key=lambda o: o.min_cosine, default=None)


@dataclass
class Manifest:
    """Everything known about one artifact; see the module docstring."""

    artifact: str
    format: Format
    precision: Precision
    signature: Signature
    task: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    size_bytes: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    conversion: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    verification: Verification | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    runtime_hints: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None  # the recipe and its stage report, when one produced the artifact
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "artifact": self.artifact,
            "format": self.format.value,
            "precision": self.precision.value,
            "task": self.task,
            "signature": self.signature.to_dict(),
            "size_bytes": self.size_bytes,
            "files": self.files,
            "source": self.source,
            "options": self.options,
            "conversion": self.conversion,
            "verification": self.verification.to_dict() if self.verification else None,
            "preprocess": self.preprocess,
            "runtime_hints": self.runtime_hints,
            "recipe": self.recipe,
            "versions": self.versions,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "beside the artifact") -> Manifest:
        """Build from a manifest's JSON; ``origin`` (its file name) goes into the errors.

        Every key is checked first (:mod:`edgekit.manifest_check`): a corrupt or hostile manifest is
        an :class:`ArtifactError`, never a ``KeyError`` or a read outside the artifact's folder."""
        from edgekit.errors import ConfigError
        from edgekit.manifest_check import FIX, check_manifest

        if not isinstance(d, dict):
            check_manifest(d, origin)  # names what it holds instead
        schema = d.get("schema", "")
        if not str(schema).startswith("edgekit.manifest/"):
            raise ArtifactError(f"{origin} is not an edgekit manifest (schema {schema!r})", fix=FIX)
        if schema != SCHEMA:
            raise ArtifactError(
                f"manifest schema {schema!r} is not supported by this edgekit (reads {SCHEMA})",
                fix="upgrade edgekit: pip install -U edgekit",
            )
        check_manifest(d, origin)
        try:
            fmt, precision = Format.parse(d["format"]), Precision.parse(d["precision"])
        except ConfigError as e:
            raise ArtifactError(f"the manifest {origin} names an {e.problem}", fix=FIX) from e
        ver = d.get("verification")
        try:
            return cls(
                artifact=d["artifact"],
                format=fmt,
                precision=precision,
                signature=Signature.from_dict(d["signature"]),
                task=d.get("task"),
                files=list(d.get("files", [])),
                size_bytes=int(d.get("size_bytes", 0)),
                source=dict(d.get("source", {})),
                options=dict(d.get("options", {})),
                conversion=dict(d.get("conversion", {})),
                versions=dict(d.get("versions", {})),
                verification=Verification.from_dict(ver) if ver else None,
                preprocess=dict(d.get("preprocess", {})),
                runtime_hints=dict(d.get("runtime_hints", {})),
                recipe=d.get("recipe"),
                created=d.get("created", ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # deeper fields (verification)
            raise ArtifactError(f"the manifest {origin} is malformed: {type(e).__name__}: {e}", fix=FIX) from e


def manifest_path(model_path: Path) -> Path:
    """``out/m-int8.onnx`` -> ``out/m-int8.onnx.edgekit.json`` (unique across formats)."""
    return model_path.with_name(model_path.name + SUFFIX)


def read_manifest(model_path: Path) -> Manifest | None:
    """The manifest beside ``model_path``, or None when there is none."""
    path = manifest_path(model_path)
    if not path.is_file():
        return None
    return load_manifest(path)


def load_manifest(path: Path) -> Manifest:
    """Read and check one manifest file; anything wrong with it is an :class:`ArtifactError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(
            f"the manifest {path} is unreadable: {e}",
            fix="re-run `edgekit convert`, or delete the manifest to load the bare model",
        ) from e
    return Manifest.from_dict(data, path.name)


def library_versions(*distributions: str) -> dict[str, str | None]:
    """Versions of python, edgekit and the given distributions, for the manifest."""
    from edgekit.deps import version

    out: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "edgekit": version("edgekit"),
    }
    for dist in distributions:
        out[dist] = version(dist)
    return out
