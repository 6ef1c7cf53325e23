"""Devices the user owns, reached over SSH: the same harness and JSON, measured there.

>>> pi = edgekit.devices.connect("pi5")  # doctest: +SKIP
>>> pi.bench("out/model-int8.onnx").host["arch"]  # doctest: +SKIP
'aarch64'

paramiko (``pip install 'edgekit[ssh]'``) is imported on first connection, never by ``import edgekit``.
"""

from __future__ import annotations

from edgekit.devices.config import (
    DeviceSpec,
    load_inventory,
    parse_target,
    remove_device,
    resolve,
    save_device,
)
from edgekit.devices.remote import Device, connect

__all__ = ["Device", "DeviceSpec", "connect", "load_inventory", "parse_target", "remove_device",
           "resolve", "save_device"]
