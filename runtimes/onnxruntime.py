"""ONNX Runtime backend: devices map to execution providers, CPU always last as fallback."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.errors import ArtifactError, ConfigError, RuntimeFailure, first_line
from edgekit.runtime import Model
from edgekit.runtimes import RUNTIMES
from edgekit.types import Device, Format, Signature, TensorSpec

# device -> execution providers that serve it, in order of preference
PROVIDERS: dict[Device, tuple[str, ...]] = {
    Device.CPU: ("CPUExecutionProvider",),
    Device.GPU: ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider",
                 "MIGraphXExecutionProvider", "CoreMLExecutionProvider"),
    Device.NPU: ("QNNExecutionProvider", "VitisAIExecutionProvider", "OpenVINOExecutionProvider"),
}
# ONNX tensor type strings -> numpy dtype names
ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}
OPT_LEVELS = ("disabled", "basic", "extended", "all")


@RUNTIMES.register("onnxruntime")
class OrtModel(Model):
    """An ONNX model in an ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"
    formats = (Format.ONNX,)
    module = "onnxruntime"
    extra = "onnxruntime"
    concurrent = True  # InferenceSession.run is thread-safe

    @classmethod
    def devices(cls) -> dict[Device, list[str]]:
        import onnxruntime as ort

        have = set(ort.get_available_providers())
        out = {d: [p for p in provs if p in have] for d, provs in PROVIDERS.items()}
        out = {d: p for d, p in out.items() if p}
        out[Device.AUTO] = [p for d in (Device.GPU, Device.NPU, Device.CPU) for p in out.get(d, [])]
        return out

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        wanted = self.request.native  # "onnxruntime:CUDAExecutionProvider": an execution provider by name
        if wanted is not None:
            if wanted not in ort.get_available_providers():
                raise self._unavailable(self.device)
            return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])
        device = self.request.kind
        usable = self.devices().get(device)
        if not usable:
            raise self._unavailable(device.value)
        if device in (Device.CPU, Device.AUTO):
            return usable
        return [usable[0], "CPUExecutionProvider"]

    def _open(self) -> Signature:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        level = str(self.options.pop("optimization", "all"))
        if level not in OPT_LEVELS:
            raise ConfigError(f"unknown optimization level {level!r}", fix=f"use one of {OPT_LEVELS}")
        so.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
        so.log_severity_level = 3
        if "spinning" in self.options:  # ORT's pool threads spin after a run by default: fast alone,
            # but on a few shared cores (a server's event loop, other processes) they take the CPU others need
            # "run": spin while a run is in progress and stop as soon as it returns, so the pool
            # does not spin between requests, when a server's event loop and clients need the cores
            spin = _spinning(self.options.pop("spinning"))
            so.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin is False else "1")
            if spin == "run":
                so.add_session_config_entry("session.force_spinning_stop", "1")
        if self.options:
            raise ConfigError(f"unknown onnxruntime option(s) {sorted(self.options)}",
                              fix="supported: optimization, spinning")
        providers = self._providers()
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:  # ORT's pybind errors (InvalidProtobuf, Fail, ...) share no base
            raise ArtifactError(f"onnxruntime cannot load {self.path.name}: {first_line(e)}",
                                fix="the file may be truncated or corrupt: re-run `edgekit convert` "
                                "or copy it again with its .data file") from e
        wanted = providers[0]
        if wanted not in self._session.get_providers():
            raise self._unavailable(self.device)
        self._outputs = [o.name for o in self._session.get_outputs()]
        return Signature(tuple(_spec(i) for i in self._session.get_inputs()),
                         tuple(_spec(o) for o in self._session.get_outputs()))

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._outputs, feed)
        except Exception as e:
            raise RuntimeFailure(f"onnxruntime failed running {self.path.name}: {str(e).strip()}",
                                 fix="check the input values (e.g. token ids within the vocabulary)") from e
        return dict(zip(self._outputs, values))

    def _close(self) -> None:
        self._session = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self._session.get_providers() if self._session else []}


def _spinning(value: Any) -> bool | str:
    """The ``spinning`` option: true, false, or ``"run"`` (spin during a run, not between runs)."""
    from edgekit.options import coerce

    if isinstance(value, str) and value.strip().lower() == "run":
        return "run"
    try:
        return coerce(bool, value, "spinning")
    except ConfigError:
        raise ConfigError(f"option spinning: expected true, false or run, got {value!r}",
                          fix="give spinning true or false, or run (spin during a run only)") from None


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or "?") for d in node.shape)
    return TensorSpec(node.name, ORT_TYPES.get(node.type, node.type), shape)
