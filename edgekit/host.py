"""One description of the machine a measurement ran on, the same locally and on a remote device.

:func:`host_info` returns a JSON-ready dict: architecture, CPU model, cores, memory, OS, Python,
edgekit and runtime versions, a UTC timestamp, the load average, and the CPU governor and
temperature where Linux exposes them. Call it before a measurement, and again with ``since=``
after it to add the load average at the end, so two result files can always be compared.

This module uses only the standard library and imports nothing from edgekit: it is also run as a
script on devices that do not have edgekit installed (``python3 - < host.py`` prints the block).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata, util
from pathlib import Path
from typing import Any

SCHEMA = "edgekit.host/1"
# runtime name -> (Python module, distribution); tflite_runtime is the legacy fallback on old boards
RUNTIMES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "openvino": ("openvino", "openvino"),
    "litert": ("ai_edge_litert", "ai-edge-litert"),
    "tflite_runtime": ("tflite_runtime", "tflite-runtime"),
    "llamacpp": ("llama_cpp", "llama-cpp-python"),
}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Model", "cpu model", "Processor"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5)
            return out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None
    return platform.processor() or None


def _memory_bytes() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _os_name() -> str:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return f"{platform.system()} {platform.release()}"


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _thermal_c() -> float | None:
    """The hottest readable thermal zone, in degrees Celsius."""
    temps = []
    for zone in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
        raw = _read(str(zone))
        if raw and raw.lstrip("-").isdigit():
            temps.append(int(raw) / 1000)
    return max(temps) if temps else None


# what a runtime can use here (execution providers, devices): one expression per runtime
_PROBES = {
    "onnxruntime": "list(__import__('onnxruntime').get_available_providers())",
    "openvino": "list(__import__('openvino').Core().available_devices)",
    "llamacpp": "['CPU', 'GPU'] if __import__('llama_cpp').llama_supports_gpu_offload() else ['CPU']",
}


def _usable(name: str, module: str) -> list[str]:
    """Probe one runtime in its own process: some runtimes crash when another is loaded beside
    them (onnxruntime with ai-edge-litert under qemu), and a crash must not take this call down."""
    import subprocess

    expr = _PROBES.get(name, f"__import__({module!r}) and ['CPU']")
    code = f"import json; print(json.dumps({expr}))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return [f"unusable: {e}"[:200]]
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return [f"unusable: {why}"[:200]]
    return json.loads(done.stdout.strip().splitlines()[-1])


def runtimes(probe: bool = False) -> dict[str, dict[str, Any]]:
    """Installed runtimes: version, and with ``probe`` what each can use (imports them)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (module, dist) in RUNTIMES.items():
        ver = _version(dist)
        if ver is None or util.find_spec(module) is None:
            continue
        out[name] = {"version": ver, **({"can_use": _usable(name, module)} if probe else {})}
    return out


def host_info(name: str | None = None, *, since: Mapping[str, Any] | None = None,
              probe: bool = False) -> dict[str, Any]:
    """The host block of a measurement on this machine.

    ``name`` labels the machine (a device name; the hostname when None). Pass the block taken
    before a measurement as ``since`` to get it back with ``load_after`` and ``finished`` filled.
    ``probe`` imports each installed runtime to list what it can use (slower; for inventories).

    >>> before = host_info()
    >>> after = host_info(since=before)
    >>> sorted(k for k in after if k.startswith("load_"))
    ['load_after', 'load_before']
    """
    if since is not None:
        return {**since, "load_after": _load(), "finished": _now()}
    uname = platform.uname()
    return {
        "schema": SCHEMA,
        "name": name or uname.node,
        "hostname": uname.node,
        "arch": uname.machine,
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "os": _os_name(),
        "kernel": uname.release,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "edgekit": _version("edgekit"),
        "numpy": _version("numpy"),
        "runtimes": runtimes(probe),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "thermal_c": _thermal_c(),
        "load_before": _load(),
        "load_after": None,
        "started": _now(),
        "finished": None,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":  # run on a device: ``python3 - [name] < host.py``
    sys.stdout.write(json.dumps(host_info(sys.argv[1] if len(sys.argv) > 1 else None, probe=True)) + "\n")
