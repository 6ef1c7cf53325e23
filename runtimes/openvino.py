"""OpenVINO Runtime backend: IR (``.xml`` + ``.bin``), and ONNX or TFLite files through OpenVINO's
own frontends (``edgekit.load("m.onnx", runtime="openvino")``).

Devices map to OpenVINO plugins: ``cpu`` -> ``CPU``, ``gpu`` -> ``GPU.0`` (the first GPU), ``npu``
-> ``NPU``, ``auto`` -> ``AUTO:<GPUs>,CPU``; ``"openvino:GPU.1"`` passes a device name through.

Precision: on CPUs with bf16 units OpenVINO computes in bf16 unless told otherwise. The hint used
is, in order, the ``precision_hint`` option, the manifest's ``runtime_hints`` (edgekit's IR
converter records ``f32``, what verification ran with), or OpenVINO's own default;
:meth:`OpenVinoModel.describe` says which hint is in effect and where it came from.

An NPU compiles static shapes only: on ``npu`` the model is reshaped to ``static_shapes`` or, when
that option is not given, to the manifest's example input shapes.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError, ConfigError, RuntimeFailure
from edgekit.options import parse_shapes
from edgekit.runtime import Model
from edgekit.runtimes import RUNTIMES
from edgekit.types import Device, Dim, Format, Signature, TensorSpec

# rt_info key under which edgekit's converter keeps the names of dynamic axes (IR has no dim names)
AXES_KEY = ["edgekit", "dynamic_axes"]
# rt_info key of the inference precision the IR was verified with (OpenVINO's own section for
# runtime options), so a bare .xml without its manifest keeps it
HINT_KEY = ["runtime_options", "INFERENCE_PRECISION_HINT"]
# edgekit device -> OpenVINO plugin whose devices ("GPU.0", "GPU.1") serve it
PLUGINS: dict[Device, str] = {Device.CPU: "CPU", Device.GPU: "GPU", Device.NPU: "NPU"}
# what "auto" lets OpenVINO's AUTO plugin choose from, best first; NPU is left out because it
# compiles static shapes only (ask for it by name)
AUTO_ORDER: tuple[Device, ...] = (Device.GPU, Device.CPU)
# plugins that compile static shapes only
STATIC_ONLY: frozenset[str] = frozenset({"NPU"})
# user spelling -> OpenVINO INFERENCE_PRECISION_HINT value
PRECISION_HINTS: dict[str, str] = {"f32": "f32", "fp32": "f32", "float32": "f32", "bf16": "bf16",
                                   "bfloat16": "bf16", "f16": "f16", "fp16": "f16", "float16": "f16"}
PERFORMANCE_HINTS: dict[str, str] = {"latency": "LATENCY", "throughput": "THROUGHPUT",
                                     "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
# plugins that take the multi-device properties below through DEVICE_PROPERTIES
COMPOSITE = ("AUTO", "MULTI", "HETERO")
IR_SUFFIX = ".xml"


@dataclass(frozen=True)
class OpenVinoRunOptions:
    """Options of ``edgekit.load(..., runtime="openvino")`` (keyword arguments of ``load``).

    >>> edgekit.load("m-int8.xml", device="cpu", precision_hint="bf16", cache_dir="~/.cache/ov")  # doctest: +SKIP
    """

    precision_hint: str | None = None  # f32 | bf16 | f16; None: the manifest's, else OpenVINO's default
    performance_hint: str = "latency"  # latency | throughput | cumulative_throughput
    num_streams: int | None = None  # None: what the performance hint picks
    cache_dir: str | None = None  # OpenVINO model cache: the second load skips compilation
    # fixed input shapes: {"input_ids": (1, 128)} or "input_ids=1x128,attention_mask=1x128"
    static_shapes: Mapping[str, Sequence[int]] | str | None = None

    def __post_init__(self) -> None:
        if self.precision_hint is not None:
            hint = PRECISION_HINTS.get(str(self.precision_hint).strip().lower())
            if hint is None:
                raise ConfigError(f"unknown precision_hint {self.precision_hint!r}",
                                  fix="use one of: f32, bf16, f16")
            object.__setattr__(self, "precision_hint", hint)
        perf = str(self.performance_hint).strip().lower()
        if perf not in PERFORMANCE_HINTS:
            raise ConfigError(f"unknown performance_hint {self.performance_hint!r}",
                              fix=f"use one of: {', '.join(PERFORMANCE_HINTS)}")
        object.__setattr__(self, "performance_hint", perf)
        if self.num_streams is not None and self.num_streams < 1:
            raise ConfigError(f"num_streams must be at least 1, got {self.num_streams}",
                              fix="pass num_streams=1 or more, or leave it to the performance hint")
        if self.static_shapes is not None:
            object.__setattr__(self, "static_shapes", parse_shapes(self.static_shapes, "static_shapes", "static_shapes='input_ids=1x128,attention_mask=1x128'"))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", str(Path(self.cache_dir).expanduser()))


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    """One ``openvino.Core`` per process: plugins load once, device discovery is cached by it."""
    import openvino as ov

    return ov.Core()


def _first_line(e: BaseException) -> str:
    """OpenVINO's messages start with C++ file positions; keep the last informative line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(e).__name__])[0]


def _components(device: str) -> list[str]:
    """``"AUTO:GPU.0,CPU"`` -> ``["GPU.0", "CPU"]``; ``"CPU"`` -> ``["CPU"]``."""
    head, sep, rest = device.partition(":")
    return [d.strip() for d in rest.split(",") if d.strip()] if sep and head in COMPOSITE else [device]


def axis_names(model: Any) -> dict[str, dict[int, str]]:
    """Dynamic axis names that edgekit's converter stored in the IR's rt_info ({} if none)."""
    try:
        if not model.has_rt_info(AXES_KEY):
            return {}
        raw = json.loads(model.get_rt_info(AXES_KEY).astype(str))
    except (RuntimeError, ValueError, TypeError):
        return {}
    return {k: {int(a): str(n) for a, n in v.items()} for k, v in raw.items() if isinstance(v, dict)}


@RUNTIMES.register("openvino")
class OpenVinoModel(Model):
    """A model compiled by ``openvino.Core`` for one device, run through one infer request."""

    name = "openvino"
    formats = (Format.OPENVINO, Format.ONNX, Format.TFLITE)
    module = "openvino"
    extra = "openvino"
    concurrent = True  # _run takes its own lock around the one infer request

    @classmethod
    def devices(cls) -> dict[Device, list[str]]:
        names = list(_core().available_devices)
        out: dict[Device, list[str]] = {}
        for device, plugin in PLUGINS.items():
            found = [n for n in names if n.split(".")[0] == plugin]
            if found:
                out[device] = found
        auto = [n for d in AUTO_ORDER for n in out.get(d, [])]
        if auto:
            out[Device.AUTO] = ["AUTO:" + ",".join(auto)]
        return out

    # -- loading ---------------------------------------------------------------------------
    def _target(self) -> str:
        """The OpenVINO device string for ``self.request``; raises when it is not available."""
        wanted = self.request.native  # "openvino:GPU.1" (or "openvino:AUTO:GPU,CPU") passthrough
        if wanted is not None:
            if wanted == "AUTO":  # AUTO without a list: the same candidates as device="auto"
                wanted = (self.devices().get(Device.AUTO) or ["AUTO:CPU"])[0]
            elif wanted in COMPOSITE:
                raise ConfigError(f"{wanted} needs a device list, e.g. openvino:{wanted}:GPU.0,CPU",
                                  fix=f"write the devices after the colon: openvino:{wanted}:GPU.0,CPU")
            have = set(_core().available_devices)
            plugins = {n.split(".")[0] for n in have}
            for part in _components(wanted):
                if part not in have and part not in plugins:
                    raise self._unavailable(self.device)
            return wanted
        device = self.request.kind
        usable = self.devices().get(device)
        if not usable:
            raise self._unavailable(device.value)
        return usable[0]

    def _read(self) -> Any:
        """Read the model file with clear errors for the usual ways an IR pair goes wrong."""
        core = _core()
        path = self.path
        if path.suffix.lower() == IR_SUFFIX:
            with open(path, "rb") as f:
                head = f.read(256).lstrip()
            if not head.startswith(b"<"):
                raise ArtifactError(f"{path.name} is not an OpenVINO IR: it does not start with XML",
                                    fix="re-run `edgekit convert --to openvino`, or copy the .xml again")
        try:
            return core.read_model(str(path))
        except RuntimeError as e:
            weights = path.with_suffix(".bin")
            if path.suffix.lower() == IR_SUFFIX and not weights.is_file():
                raise ArtifactError(f"{path.name} needs its weights file {weights.name}, which is missing",
                                    fix=f"copy {weights.name} next to {path.name}: an OpenVINO IR is "
                                    "the .xml and .bin pair") from e
            raise ArtifactError(f"openvino cannot read {path.name}: {_first_line(e)}",
                                fix="the file may be truncated or corrupt: re-run `edgekit convert` or "
                                "copy the model (with its .bin or .data file) again") from e

    def _static_shapes(self, model: Any, opts: OpenVinoRunOptions, target: str
                       ) -> tuple[dict[str, tuple[int, ...]] | None, str | None]:
        """Shapes to fix before compiling, and why (None when the model stays as it is)."""
        if opts.static_shapes:
            return dict(opts.static_shapes), "static_shapes option"
        needs = [p for p in _components(target) if p.split(".")[0] in STATIC_ONLY]
        dynamic = [i.get_any_name() for i in model.inputs if i.get_partial_shape().is_dynamic]
        if not needs or not dynamic:
            return None, None
        recorded = {s.name: s.example_shape for s in (self.manifest.signature.inputs if self.manifest else ())
                    if s.example_shape}
        names = [i.get_any_name() for i in model.inputs]
        if all(n in recorded for n in names):
            return ({n: tuple(recorded[n]) for n in names},
                    f"{needs[0]} compiles static shapes only: the manifest's example input shapes")
        raise ConfigError(f"{needs[0]} compiles static shapes only, and {self.path.name} has dynamic "
                          f"inputs {dynamic} with no example shapes recorded",
                          fix="pass the shapes to run with, e.g. edgekit.load(path, device='npu', "
                          f"static_shapes={{'{dynamic[0]}': (1, 128)}})")

    def _reshape(self, model: Any, shapes: dict[str, tuple[int, ...]]) -> None:
        import openvino as ov

        ports = {i.get_any_name(): i for i in model.inputs}
        unknown = sorted(set(shapes) - set(ports))
        if unknown:
            raise ConfigError(f"static_shapes names unknown input(s) {unknown}",
                              fix=f"the inputs are: {', '.join(ports)}")
        for name, shape in shapes.items():
            rank = ports[name].get_partial_shape().rank
            if rank.is_static and rank.get_length() != len(shape):
                raise ConfigError(f"static shape {list(shape)} for {name!r} has rank {len(shape)}, "
                                  f"the input has rank {rank.get_length()}",
                                  fix=f"give {name!r} {rank.get_length()} sizes")
        try:
            model.reshape({ports[n]: ov.PartialShape(list(s)) for n, s in shapes.items()})
        except RuntimeError as e:
            raise ConfigError(f"{self.path.name} cannot take the static shapes {shapes}: {_first_line(e)}",
                              fix="give shapes the model accepts (fixed axes keep their sizes)") from e

    def _hint(self, opts: OpenVinoRunOptions, model: Any) -> tuple[str | None, str]:
        if opts.precision_hint:
            return opts.precision_hint, "precision_hint option"
        recorded = (self.manifest.runtime_hints.get("precision_hint") if self.manifest else None)
        if recorded:
            hint = PRECISION_HINTS.get(str(recorded).lower())
            if hint:
                return hint, "manifest runtime_hints (what verification ran with)"
        try:
            inside = model.get_rt_info(HINT_KEY).astype(str) if model.has_rt_info(HINT_KEY) else None
        except (RuntimeError, ValueError, TypeError):
            inside = None
        hint = PRECISION_HINTS.get(str(inside).strip().lower()) if inside else None
        if hint:
            return hint, "the IR's rt_info (runtime_options)"
        return None, "openvino default for the device"

    def _config(self, target: str, opts: OpenVinoRunOptions, hint: str | None) -> dict[str, Any]:
        """Compile properties; per-device ones go through DEVICE_PROPERTIES for AUTO/MULTI/HETERO."""
        core = _core()
        common: dict[str, Any] = {"PERFORMANCE_HINT": PERFORMANCE_HINTS[opts.performance_hint]}
        if opts.cache_dir:
            Path(opts.cache_dir).mkdir(parents=True, exist_ok=True)
            common["CACHE_DIR"] = opts.cache_dir
        per_device: dict[str, dict[str, Any]] = {}
        for dev in _components(target):
            supported = set(core.get_property(dev, "SUPPORTED_PROPERTIES"))
            props: dict[str, Any] = {}
            # the manifest's hint applies where the device takes one; an explicit option always goes
            if hint and ("INFERENCE_PRECISION_HINT" in supported or opts.precision_hint):
                props["INFERENCE_PRECISION_HINT"] = hint
            if self.threads and "INFERENCE_NUM_THREADS" in supported:
                props["INFERENCE_NUM_THREADS"] = int(self.threads)
            if opts.num_streams:
                props["NUM_STREAMS"] = int(opts.num_streams)
            per_device[dev] = props
        if target.partition(":")[0] in COMPOSITE:
            return {**common, "DEVICE_PROPERTIES": {d: p for d, p in per_device.items() if p}}
        return {**common, **per_device.get(target, {})}

    def _open(self) -> Signature:
        import openvino as ov

        from edgekit.options import parse_options

        opts = parse_options(OpenVinoRunOptions, self.options)
        target = self._target()
        model = self._read()
        shapes, why = self._static_shapes(model, opts, target)
        if shapes:
            self._reshape(model, shapes)
        hint, source = self._hint(opts, model)
        config = self._config(target, opts, hint)
        try:
            compiled = _core().compile_model(model, target, config)
        except RuntimeError as e:
            raise RuntimeFailure(f"openvino cannot compile {self.path.name} for {target}: {_first_line(e)}",
                                 fix="try another device or precision_hint; `edgekit devices` lists "
                                 "what this machine has") from e
        self._opts, self._target_name, self._shapes, self._shapes_why = opts, target, shapes, why
        self._precision_hint, self._hint_source = hint, source
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns
        self._inputs = [i.get_any_name() for i in compiled.inputs]
        self._outputs = [o.get_any_name() for o in compiled.outputs]
        self._tensor = ov.Tensor
        names = axis_names(model)
        recorded = self.manifest.signature if self.manifest else None
        inputs = tuple(_spec(p, names.get(p.get_any_name(), {}), _recorded(recorded, p.get_any_name(), True))
                       for p in compiled.inputs)
        outputs = tuple(_spec(p, {}, _recorded(recorded, p.get_any_name(), False)) for p in compiled.outputs)
        return Signature(inputs, outputs)

    # -- running ---------------------------------------------------------------------------
    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # set each input as a zero-copy tensor and infer: measured ~2 % faster on a 4 ms model than
        # InferRequest.infer(dict), whose generic Python dispatch costs ~0.1 ms per call
        req, tensor = self._request, self._tensor
        try:
            with self._lock:
                # the request keeps a raw pointer into each input, not the array: every array must
                # live until infer() returns (a copy freed earlier was read after malloc reused it)
                held = []
                for i, name in enumerate(self._inputs):
                    arr = feed[name]  # (np.ascontiguousarray would turn a 0-d input into 1-d)
                    # OpenVINO refuses to share a read-only buffer (np.frombuffer, a memory map, Ray's
                    # object store): copy those, as it copies a non-contiguous one
                    if not (arr.flags.c_contiguous and arr.flags.writeable):
                        arr = arr.copy()
                    held.append(arr)
                    req.set_input_tensor(i, tensor(arr, shared_memory=True))
                req.infer()
                return {name: req.get_output_tensor(i).data.copy() for i, name in enumerate(self._outputs)}
        except (RuntimeError, TypeError, ValueError) as e:
            raise RuntimeFailure(f"openvino failed running {self.path.name}: {_first_line(e)}",
                                 fix="check the input values (e.g. token ids within the vocabulary)") from e

    def _close(self) -> None:
        self._request = None
        self._compiled = None

    def describe(self) -> dict[str, Any]:
        """Backend facts: the OpenVINO device, the precision hint in effect and where it came from,
        threads and streams, the cache directory, and any static shapes the model was fixed to."""
        compiled = self._compiled
        info: dict[str, Any] = {**super().describe(), "openvino_device": self._target_name,
                                "precision_hint": self._precision_hint, "precision_hint_source": self._hint_source,
                                "performance_hint": self._opts.performance_hint,
                                "cache_dir": self._opts.cache_dir,
                                "static_shapes": {k: list(v) for k, v in (self._shapes or {}).items()} or None,
                                "static_shapes_reason": self._shapes_why}
        for key, prop in (("execution_devices", "EXECUTION_DEVICES"),
                          ("precision_hint", "INFERENCE_PRECISION_HINT"),
                          ("threads", "INFERENCE_NUM_THREADS"), ("num_streams", "NUM_STREAMS")):
            info[key] = _property(compiled, prop, info.get(key))
        return info


def _property(compiled: Any, name: str, default: Any) -> Any:
    if compiled is None:
        return default
    try:
        value = compiled.get_property(name)
    except RuntimeError:  # AUTO and some plugins do not report every property
        return default
    if hasattr(value, "get_type_name"):  # an openvino Type, e.g. bf16
        return value.get_type_name()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def _recorded(signature: Signature | None, name: str, is_input: bool) -> TensorSpec | None:
    if signature is None:
        return None
    for spec in signature.inputs if is_input else signature.outputs:
        if spec.name == name:
            return spec
    return None


def _spec(port: Any, names: dict[int, str], recorded: TensorSpec | None) -> TensorSpec:
    """A port as a TensorSpec; dynamic axes take edgekit's recorded names, else the manifest's, else '?'."""
    dims: list[Dim] = []
    pshape = port.get_partial_shape()
    for i, d in enumerate(pshape):
        if d.is_static:
            dims.append(int(d.get_length()))
            continue
        name = names.get(i)
        if name is None and recorded is not None and i < len(recorded.shape) \
                and isinstance(recorded.shape[i], str):
            name = recorded.shape[i]
        dims.append(name or "?")
    dtype = np.dtype(port.get_element_type().to_dtype()).name
    return TensorSpec(port.get_any_name(), dtype, tuple(dims))
