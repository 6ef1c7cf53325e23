"""Which models a server holds: artifacts found from paths and folders, named from their manifests,
checked against their sha256, then loaded with :func:`edgekit.load`.

A folder contributes every artifact whose manifest (``*.edgekit.json``) lies in it. A model's name
is its manifest's artifact file name without the suffix (``r8-minilm-int8-dynamic.onnx`` ->
``r8-minilm-int8-dynamic``); artifacts of one name in two formats get the format appended
(``m-fp32-onnx``, ``m-fp32-openvino``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import ArtifactError, ConfigError
from edgekit.manifest import SUFFIX
from edgekit.runtime import ArtifactRef, resolve_artifact


@dataclass(frozen=True)
class Entry:
    """An artifact to serve under ``name``; ``verified``: its files matched the manifest's sha256."""

    name: str
    ref: ArtifactRef
    verified: bool


def find_artifacts(paths: Sequence[str | Path], *, allow_unverified: bool = False) -> list[Entry]:
    """Resolve ``paths`` (model files, manifests, folders) into named, sha256-checked entries.

    >>> [e.name for e in find_artifacts(["out/"])]  # doctest: +SKIP
    ['r8-minilm-int8-dynamic', 'smollm2-q4_k_m']
    """
    from edgekit.serve.integrity import verify_files

    if not paths:
        raise ConfigError("no artifact to serve", fix="name model files or folders: edgekit serve out/")
    refs: list[ArtifactRef] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            manifests = sorted(p.glob("*" + SUFFIX))
            if not manifests:
                raise ArtifactError(f"{p} holds no edgekit artifact (no *{SUFFIX} manifest)",
                                    fix="convert a model into it with `edgekit convert --out DIR`, or name "
                                    "the model files themselves")
            refs += [resolve_artifact(m) for m in manifests]
        else:
            refs.append(resolve_artifact(p))
    seen: set[Path] = set()
    unique = [r for r in refs if not (r.path.resolve() in seen or seen.add(r.path.resolve()))]
    entries = []
    for ref, name in zip(unique, _names(unique)):
        if ref.manifest is None and allow_unverified:
            entries.append(Entry(name, ref, False))
            continue
        verify_files(ref.path, ref.manifest)
        entries.append(Entry(name, ref, True))
    return entries


def _base(ref: ArtifactRef) -> str:
    file = ref.manifest.artifact if ref.manifest else ref.path.name
    return Path(file).stem


def _names(refs: Sequence[ArtifactRef]) -> list[str]:
    counts = Counter(_base(r) for r in refs)
    names = [_base(r) if counts[_base(r)] == 1 else f"{_base(r)}-{r.format.value}" for r in refs]
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes:
        clash = [str(r.path) for r, n in zip(refs, names) if n == dupes[0]]
        raise ConfigError(f"two artifacts would be served as {dupes[0]!r}: {', '.join(clash)}",
                          fix="serve them from separate servers, or rename one of them (and its manifest)")
    return names
