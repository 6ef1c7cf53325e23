"""Where the LiteRT backend finds TFLite delegate libraries (GPU, NPU, any external delegate).

Only file lookups here: a library is loaded (``load_delegate``) when a model asks for its device.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.types import Device

# device -> (name, shared library) of TFLite external-delegate plugins that serve it, best first
DELEGATES: dict[Device, tuple[tuple[str, str], ...]] = {
    Device.GPU: (("gpu", "libtensorflowlite_gpu_delegate.so"),),
    Device.NPU: (("edgetpu", "libedgetpu.so.1"), ("vx", "libvx_delegate.so"),
                 ("qnn", "libQnnTFLiteDelegate.so"), ("hexagon", "libhexagon_delegate.so")),
}


def _search_dirs() -> list[Path]:
    """Where delegate libraries are looked for: $EDGEKIT_LITERT_DELEGATE_PATH, $LD_LIBRARY_PATH,
    then the usual system library folders (Linux boards, Android vendor/system)."""
    dirs = []
    for var in ("EDGEKIT_LITERT_DELEGATE_PATH", "LD_LIBRARY_PATH"):
        dirs += [Path(p) for p in os.environ.get(var, "").split(os.pathsep) if p]
    machine = os.uname().machine if hasattr(os, "uname") else ""
    dirs += [Path(p) for p in ("/usr/local/lib", "/usr/lib", "/usr/lib64", f"/usr/lib/{machine}-linux-gnu",
                               "/vendor/lib64", "/system/lib64")]
    return dirs


def find_library(name: str) -> Path | None:
    """The path of delegate library ``name`` (a file name or a path), or None."""
    p = Path(name).expanduser()
    if p.is_absolute() or os.sep in name:
        return p if p.is_file() else None
    return next((d / name for d in _search_dirs() if (d / name).is_file()), None)
