"""File helpers: hashing, sizes and atomic publication of finished files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """The user's edgekit cache: ``$EDGEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgekit``, else
    ``~/.cache/edgekit`` (probe markers, known sha256 sums)."""
    root = os.environ.get("EDGEKIT_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgekit"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def total_size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; manifests are read by other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STAGING_PREFIX = ".edgekit-staging-"
OWNER_FILE = ".owner"  # {"pid", "host", "start"}: who is writing into a staging folder
UNOWNED_STALE_S = 3600.0  # a folder with no owner record (an older edgekit's) is stale after this


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the "(comm)" field


def _owner_gone(folder: Path) -> bool:
    """True when the process that made ``folder`` has ended (killed, crashed); False while it may
    still run: alive, on another host (a shared --out), or just creating its owner record."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
        pid, host, start = int(owner["pid"]), owner.get("host"), owner.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return time.time() - folder.stat().st_mtime > UNOWNED_STALE_S
        except OSError:
            return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    now = _process_start(pid)
    return start is not None and now is not None and now != start  # the pid was reused


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove staging folders in ``out_dir`` whose owner process is gone (``kill -9`` mid-conversion
    skips every cleanup); returns what was removed. Live conversions' folders are kept."""
    removed = []
    for folder in sorted(Path(out_dir).glob(STAGING_PREFIX + "*")):
        if folder.is_dir() and not folder.is_symlink() and _owner_gone(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A scratch directory inside ``out_dir`` (same filesystem, so renames are atomic).

    It is removed whatever happens, so an interrupted conversion leaves nothing half-written; one
    killed outright leaves it behind, and the next staging in ``out_dir`` removes it with an
    :class:`~edgekit.errors.EdgekitWarning` naming it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_staging(out_dir)
    if stale:
        from edgekit.errors import EdgekitWarning

        many = len(stale) > 1
        warnings.warn(f"removed {len(stale)} staging folder{'s' if many else ''} left in {out_dir} by "
                      f"{'conversions that were' if many else 'a conversion that was'} killed or crashed: "
                      f"{', '.join(p.name for p in stale)}", EdgekitWarning, stacklevel=3)
    tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        pid = os.getpid()
        (tmp / OWNER_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                  "start": _process_start(pid)}))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(files: list[Path], dest_dir: Path) -> list[Path]:
    """Move finished files from a staging dir into ``dest_dir``, each by an atomic rename.

    Callers pass the main model file last, so its presence means its companions are in place.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    published = []
    for src in files:
        dst = dest_dir / src.name
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(src, dst)
        else:
            os.replace(src, dst)
        published.append(dst)
    return published
