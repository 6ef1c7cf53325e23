"""``edgekit devices setup``: the runtime-only pip install on the device (no torch, no converter).

By default the device installs ``edgekit[<runtime>]`` from its package index. ``wheel`` pushes a
local edgekit wheel (content-addressed, like an artifact) and installs that; ``offline`` adds
``--no-index`` for devices that cannot reach an index (their dependencies must already be there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.devices.push import Bundle, FileEntry, _hash, push
from edgekit.devices.remote import EXTRAS, Device
from edgekit.errors import ConfigError, RemoteDeviceError


@dataclass(frozen=True)
class SetupPlan:
    """The pip commands that will run on the device, shown to the user before they run."""

    device: str
    commands: list[list[str]]
    wheel: Path | None

    def describe(self) -> str:
        return "\n".join(" ".join(c) for c in self.commands)


def plan(device: Device, runtime: str = "onnxruntime", *, wheel: str | Path | None = None,
         offline: bool = False) -> SetupPlan:
    """What :func:`setup` would run on ``device`` (nothing is sent yet)."""
    extras = [r.strip() for r in runtime.split(",") if r.strip()]
    unknown = [r for r in extras if r not in EXTRAS]
    if unknown:
        raise ConfigError(f"unknown runtime {unknown[0]!r} for a device",
                          fix=f"use one of: {', '.join(EXTRAS)} (comma-separated for several)")
    extra = ",".join(EXTRAS[r] for r in extras)
    pip = [device.spec.python, "-m", "pip", "install", "--disable-pip-version-check",
           *(["--no-index"] if offline else [])]
    w = Path(wheel).expanduser() if wheel else None
    if w is None:
        return SetupPlan(device.name, [[*pip, f"edgekit[{extra}]"]], None)
    if not w.is_file() or not w.name.endswith(".whl"):
        raise ConfigError(f"{w} is not a wheel file", fix="build one with: pip wheel --no-deps -w dist .")
    target = f"<pushed>/{w.name}"  # the dependencies, then this very wheel even if the version is unchanged
    return SetupPlan(device.name, [[*pip, f"{target}[{extra}]"], [*pip, "--no-deps", "--force-reinstall", target]], w)


def setup(device: Device, p: SetupPlan, *, timeout: float = 1800.0) -> str:
    """Run the plan on the device; pip's last lines, or a :class:`RemoteDeviceError` with them."""
    commands = p.commands
    if p.wheel is not None:
        b = Bundle(p.wheel.name, (FileEntry(p.wheel.name, p.wheel, _hash(p.wheel), p.wheel.stat().st_size),))
        push(device, b)
        placed = device.agent("place", b.job(device.spec.workdir), timeout=120)["model"]
        commands = [[a.replace(f"<pushed>/{p.wheel.name}", placed) for a in c] for c in commands]
    tail = ""
    for argv in commands:
        done = device.link.run(argv, timeout=timeout)
        text = (done.stdout + done.stderr).decode(errors="replace").strip()
        tail = "\n".join(text.splitlines()[-5:])
        if done.returncode != 0:
            raise RemoteDeviceError(device.name, f"pip install failed on the device (exit {done.returncode}): {tail}",
                                    fix="read pip's message above; a device without an index needs the wheels "
                                    "there first (pip download --platform ... on this machine, then --find-links)")
    return tail
