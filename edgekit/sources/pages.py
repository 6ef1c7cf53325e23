"""Resident pages of memory-mapped weights, handed back to the page cache between phases.

transformers maps a safetensors checkpoint whose dtype is the model's (``MAP_PRIVATE``) and the
parameters point into that mapping: the fp32 model *is* the file's pages, resident once a forward
pass has touched them, and counted in the process's RSS for as long as they stay mapped in. When
the PyTorch model is idle while something else needs the memory (llama.cpp mapping the GGUF file
it verifies), :func:`drop_mapped_pages` un-maps those pages with ``MADV_DONTNEED``: the parameters
stay valid, and the next forward pass faults them back in from the page cache (or the disk).

A private mapping that holds a modified page (a parameter changed in place: copy-on-write made it
anonymous memory) is left alone, since dropping it would lose the change; so call it where
nothing modifies those parameters at the same time (the check and the drop are two steps). Linux
only: elsewhere nothing is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MADV_DONTNEED = 4  # <sys/mman.h> on Linux, every architecture
_RANGE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


@dataclass(frozen=True)
class Mapping:
    """One mapping of a file in this process (from ``/proc/self/smaps``), sizes in bytes."""

    start: int
    end: int
    path: str
    rss: int
    anonymous: int  # copy-on-write pages: modified in this process, not the file's any more


def mappings(paths: Iterable[str | Path]) -> list[Mapping]:
    """This process's mappings of ``paths`` (none when ``/proc/self/smaps`` cannot be read)."""
    wanted = {str(Path(p).resolve()) for p in paths}
    found: list[Mapping] = []
    current: dict[str, int | str] | None = None
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _RANGE.match(line)
                if m:
                    if current is not None:
                        found.append(Mapping(**current))  # type: ignore[arg-type]
                    path = m.group(3).strip()
                    current = ({"start": int(m.group(1), 16), "end": int(m.group(2), 16), "path": path,
                                "rss": 0, "anonymous": 0} if path in wanted else None)
                elif current is not None and line.startswith(("Rss:", "Anonymous:")):
                    key, value = line.split(":", 1)
                    current[key.lower()] = int(value.split()[0]) * 1024
    except OSError:
        return []
    if current is not None:
        found.append(Mapping(**current))  # type: ignore[arg-type]
    return found


def drop_mapped_pages(paths: Iterable[str | Path]) -> int:
    """Un-map the resident, unmodified pages of every mapping of ``paths`` in this process; the
    bytes of resident memory handed back. Mappings holding a modified page are skipped."""
    import ctypes

    maps = [m for m in mappings(paths) if m.rss and not m.anonymous]
    libc = _libc() if maps else None
    if libc is None:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    dropped = 0
    for m in maps:
        if libc.madvise(ctypes.c_void_p(m.start), ctypes.c_size_t(m.end - m.start), MADV_DONTNEED) == 0:
            dropped += m.rss
    return dropped


def release_free_heap() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``); whether it ran.

    Freed blocks below glibc's mmap threshold (which rises to 32 MB after large frees) stay in the
    heap and count as resident: after llama.cpp verified a SmolLM2 file, about 190 MB of them."""
    import ctypes

    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:  # not glibc (musl, macOS): nothing to do
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _libc() -> Any:
    """The C library loaded through ctypes, or None where it cannot be."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
