"""The device inventory: named SSH devices saved in the user's config directory.

``$XDG_CONFIG_HOME/edgekit/devices.json`` (``~/.config`` when unset) maps a name to an SSH target,
identity, remote Python and work directory. Host keys accepted with ``--accept-new-host-key`` are
recorded in ``known_hosts`` beside it (``~/.ssh/known_hosts`` is read as well, never written).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgekit.errors import ConfigError
from edgekit.fsutil import write_json_atomic

SCHEMA = "edgekit.devices/1"
DEFAULT_WORKDIR = ".cache/edgekit-device"  # relative paths are relative to the remote home
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/edgekit``, or ``~/.config/edgekit``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgekit"


def inventory_path() -> Path:
    return config_dir() / "devices.json"


def known_hosts_path() -> Path:
    return config_dir() / "known_hosts"


@dataclass(frozen=True)
class DeviceSpec:
    """How to reach one device. ``host`` may be a ``~/.ssh/config`` alias."""

    name: str
    host: str
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    python: str = "python3"
    workdir: str = DEFAULT_WORKDIR
    connect_timeout: float = 15.0

    @property
    def url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> DeviceSpec:
        known = {f.name for f in fields(cls)}
        return cls(name=name, **{k: v for k, v in d.items() if k in known})


def parse_target(target: str, name: str | None = None, **overrides: Any) -> DeviceSpec:
    """``ssh://user@host:port`` (or ``user@host``) to a spec; ``overrides`` set the other fields."""
    text = target if "://" in target else f"ssh://{target}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{target!r}: the port is not a number", fix="write ssh://user@host:2222") from None
    if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"{target!r} is not an SSH device address",
                          fix="write ssh://user@host[:port], or the name of a device from `edgekit devices`")
    spec = DeviceSpec(name=name or parts.hostname, host=parts.hostname, user=parts.username, port=port)
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def load_inventory() -> dict[str, DeviceSpec]:
    """Every saved device by name (empty when there is no inventory yet)."""
    path = inventory_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"the device inventory {path} is unreadable: {e}",
                          fix=f"fix or delete {path}, then add the devices again") from e
    return {name: DeviceSpec.from_dict(name, d) for name, d in (data.get("devices") or {}).items()}


def save_device(spec: DeviceSpec) -> Path:
    """Add or replace ``spec`` in the inventory (written atomically)."""
    if not _NAME.match(spec.name):
        raise ConfigError(f"{spec.name!r} is not a usable device name",
                          fix="use letters, digits, '.', '_' or '-', e.g. pi5")
    devices = load_inventory()
    devices[spec.name] = spec
    path = inventory_path()
    write_json_atomic(path, {"schema": SCHEMA, "devices": {n: s.to_dict() for n, s in sorted(devices.items())}})
    return path


def remove_device(name: str) -> bool:
    """Forget a device; False when it was not saved."""
    devices = load_inventory()
    if devices.pop(name, None) is None:
        return False
    write_json_atomic(inventory_path(), {"schema": SCHEMA, "devices": {n: s.to_dict() for n, s in devices.items()}})
    return True


def resolve(target: str | DeviceSpec) -> DeviceSpec:
    """A saved device name, or an ``ssh://`` address, to a spec."""
    if isinstance(target, DeviceSpec):
        return target
    devices = load_inventory()
    if target in devices:
        return devices[target]
    if "://" in target or "@" in target:
        return parse_target(target)
    known = ", ".join(sorted(devices)) or "none saved yet"
    raise ConfigError(f"no device named {target!r} (known: {known})",
                      fix=f"add it: edgekit devices add {target} ssh://user@host --identity ~/.ssh/id_ed25519")
