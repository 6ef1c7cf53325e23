"""LiteRT backend (the TFLite interpreter, ``ai-edge-litert``) for ``.tflite`` artifacts.

Devices: ``cpu`` runs LiteRT's CPU kernels with XNNPACK (``xnnpack=False`` for the builtin
kernels); ``gpu`` and ``npu`` load a TFLite delegate library found on this machine (the GPU
delegate; Edge TPU, NXP VX, Qualcomm QNN or Hexagon delegates); ``"litert:/path/libdelegate.so"``
loads any external delegate by path (``delegate_options={...}`` are passed to it). Ops a delegate
does not take run on the CPU.

What the runtime does for the caller:

- **int8 I/O**: quantized inputs take float arrays and outputs come back as float, using each
  tensor's scale and zero point (``raw_int8=True`` exchanges the raw integers instead).
- **Fixed shapes**: edgekit's converter writes fixed-shape graphs and a plan inside the file
  (see :mod:`edgekit.runtimes.litert.plan`). A feed of any batch size runs in chunks of the
  fixed batch; an axis the converter verified as padding-safe (a text model's sequence) takes any
  length up to its fixed size, padded, and per-position outputs are cropped back.
- **Layout**: an NHWC artifact takes channel-last arrays; ``feed_layout="nchw"`` accepts the
  PyTorch layout and transposes.
- **Crash safety**: the first load of a file runs it once in a fresh process; a model that aborts
  LiteRT raises :class:`~edgekit.errors.RuntimeFailure` instead of killing the caller
  (``probe=False`` skips this; see :mod:`edgekit.runtimes.litert.probe`).

When ``ai_edge_litert`` is missing, ``tflite_runtime`` is used with a warning (old ARM boards):
``tflite-runtime`` 2.14 returns wrong results for some int8 models without an error.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.deps import available
from edgekit.errors import ArtifactError, ConfigError, DeviceUnavailableError, InputError, RuntimeFailure
from edgekit.runtime import Model
from edgekit.runtimes import RUNTIMES
from edgekit.runtimes.litert.delegates import DELEGATES, find_library
from edgekit.runtimes.litert.plan import Plan, native_output, pad_axis, quant_params, read_plan, take_rows
from edgekit.types import Device, Dim, Format, Signature, TensorSpec

# Python packages that provide the TFLite interpreter, preferred first
BACKEND_MODULES: tuple[str, ...] = ("ai_edge_litert", "tflite_runtime")
FALLBACK_WARNING = ("edgekit is running .tflite files with tflite_runtime because ai-edge-litert is not "
                    "installed; tflite-runtime 2.14 returns wrong results for some int8 models without "
                    "an error: pip install 'edgekit[litert]' where a LiteRT wheel exists")
CPU_BACKENDS: tuple[str, ...] = ("xnnpack", "builtin")
FEED_LAYOUTS: tuple[str, ...] = ("model", "nchw")
DEFAULT_THREADS = 1  # what the LiteRT Python interpreter uses when not told


def _backend_module() -> str:
    return next((m for m in BACKEND_MODULES if available(m)), BACKEND_MODULES[0])


@dataclass(frozen=True)
class LiteRtRunOptions:
    """Options of ``edgekit.load(..., runtime="litert")`` (keyword arguments of ``load``).

    >>> edgekit.load("m-int8.tflite", threads=2, raw_int8=True)  # doctest: +SKIP
    """

    xnnpack: bool = True  # cpu: XNNPACK kernels (False: LiteRT's builtin kernels only)
    raw_int8: bool = False  # exchange quantized inputs/outputs as raw integers instead of floats
    feed_layout: str = "model"  # "nchw": accept PyTorch-layout arrays for an NHWC artifact
    probe: bool = True  # first load of a file runs it in a fresh process (crash safety)
    probe_timeout: float = 120.0
    delegate_options: Mapping[str, Any] = field(default_factory=dict)  # passed to load_delegate

    def __post_init__(self) -> None:
        if self.feed_layout not in FEED_LAYOUTS:
            raise ConfigError(f"unknown feed_layout {self.feed_layout!r}", fix=f"use one of: {', '.join(FEED_LAYOUTS)}")
        if self.probe_timeout <= 0:
            raise ConfigError("probe_timeout must be positive", fix="use e.g. probe_timeout=120")
        if not isinstance(self.delegate_options, Mapping):
            raise ConfigError("delegate_options must be a mapping of option name to value",
                              fix='pass e.g. delegate_options={"device": "usb"}')


_WARNED: set[str] = set()


def _interpreter_module() -> Any:
    module = _backend_module()
    if module == "ai_edge_litert":
        from ai_edge_litert import interpreter
    else:
        from tflite_runtime import interpreter  # type: ignore[import-not-found,no-redef]

        if module not in _WARNED:
            _WARNED.add(module)
            warnings.warn(FALLBACK_WARNING, RuntimeWarning, stacklevel=4)
    return interpreter


@dataclass
class _Tensor:
    """One input or output: where it lives in the interpreter and how values are mapped."""

    name: str
    index: int
    dtype: np.dtype
    shape: tuple[int, ...]
    scale: np.ndarray | None  # set when values are (de)quantized for the caller
    zero_point: np.ndarray | None
    signature_shape: tuple[Dim, ...]


@RUNTIMES.register("litert")
class LiteRtModel(Model):
    """A ``.tflite`` model in a LiteRT interpreter."""

    name = "litert"
    formats = (Format.TFLITE,)
    module = _backend_module()
    extra = "litert"

    @classmethod
    def devices(cls) -> dict[Device, list[str]]:
        out: dict[Device, list[str]] = {Device.CPU: list(CPU_BACKENDS)}
        for device, libs in DELEGATES.items():
            found = [f"{name} ({path})" for name, lib in libs if (path := find_library(lib))]
            if found:
                out[device] = found
        out[Device.AUTO] = [n for d in (Device.GPU, Device.NPU, Device.CPU) for n in out.get(d, [])[:1]]
        return out

    # -- loading ---------------------------------------------------------------------------
    def _backend(self, opts: LiteRtRunOptions) -> tuple[str, Path | None]:
        """(backend name, delegate library or None) for ``self.request``."""
        wanted = self.request.native  # "litert:xnnpack", "litert:/path/libdelegate.so"
        if wanted is not None:
            if wanted in CPU_BACKENDS:
                return wanted, None
            lib = find_library(wanted)
            if lib is None:
                raise DeviceUnavailableError(f"no delegate library {wanted!r} on this machine",
                                             fix="give the full path of a TFLite external-delegate .so, or "
                                             "one of: " + ", ".join(self._listing()))
            return lib.name, lib
        device = self.request.kind
        if device is Device.CPU:
            return ("xnnpack" if opts.xnnpack else "builtin"), None
        order = [device] if device is not Device.AUTO else [Device.GPU, Device.NPU]
        for d in order:
            for name, filename in DELEGATES.get(d, ()):
                path = find_library(filename)
                if path is not None:
                    return name, path
        if device is Device.AUTO:
            return ("xnnpack" if opts.xnnpack else "builtin"), None
        raise self._unavailable(device.value)

    def _listing(self) -> list[str]:
        return [f"{d.value} ({', '.join(n)})" for d, n in self.devices().items() if d is not Device.AUTO]

    def _open(self) -> Signature:
        from edgekit.options import parse_options

        opts = parse_options(LiteRtRunOptions, self.options)
        self._opts = opts
        self._plan = read_plan(self.path)  # also rejects a file that is not a TFLite flatbuffer
        self._backend_name, library = self._backend(opts)
        if opts.probe:
            from edgekit.runtimes.litert.probe import ensure_probed

            probe_opts = {"xnnpack": opts.xnnpack, "raw_int8": opts.raw_int8,
                          **({"delegate_options": dict(opts.delegate_options)} if opts.delegate_options else {})}
            self._probe = ensure_probed(self.path, runtime=self.name, version=self.version(), device=self.device,
                                        threads=self.threads, options=probe_opts, timeout=opts.probe_timeout)
        else:
            self._probe = "skipped"
        mod = _interpreter_module()
        delegates = []
        if library is not None:
            with native_output() as out:
                try:
                    delegates.append(mod.load_delegate(str(library), dict(opts.delegate_options)))
                except (ValueError, OSError, RuntimeError) as e:
                    raise DeviceUnavailableError(
                        f"the delegate {library} could not be loaded: {str(e).strip() or out.tail()}",
                        fix="check the delegate's runtime (driver, device permissions, delegate_options), "
                        "or use device='cpu'") from e
        resolver = mod.OpResolverType.AUTO if self._backend_name != "builtin" else \
            mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        with native_output() as out:
            try:
                self._it = mod.Interpreter(model_path=str(self.path), num_threads=self.threads,
                                           experimental_delegates=delegates or None,
                                           experimental_op_resolver_type=resolver)
                self._it.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ArtifactError(f"LiteRT cannot load {self.path.name}: {first or out.tail()}",
                                    fix="the file may be truncated, corrupt or need newer LiteRT ops: re-run "
                                    "`edgekit convert --to tflite`, copy it again, or upgrade ai-edge-litert") from e
        self._delegates = delegates
        self._native_log = out.text
        return self._read_signature()

    def _read_signature(self) -> Signature:
        it, raw = self._it, self._opts.raw_int8
        sigs = it.get_signature_list()
        self._runner = None
        if sigs:
            key = next(iter(sigs))
            runner = it.get_signature_runner(key)
            ins, outs = runner.get_input_details(), runner.get_output_details()
            subgraph = getattr(runner, "_subgraph_index", 0)
            if subgraph != 0:  # set_tensor/invoke address subgraph 0; others go through the runner
                self._runner = runner
        else:
            ins = {d["name"]: d for d in it.get_input_details()}
            outs = {d["name"]: d for d in it.get_output_details()}
        plan = self._plan
        in_order = [n for n in plan.inputs if n in ins] + [n for n in ins if n not in plan.inputs]
        out_order = [n for n in plan.outputs if n in outs] + [n for n in outs if n not in plan.outputs]
        self._inputs = [self._tensor(n, ins[n], raw, is_input=True) for n in in_order]
        self._outputs = [self._tensor(n, outs[n], raw, is_input=False) for n in out_order]
        batches = {t.shape[p.batch_axis] for t in self._inputs
                   if (p := plan.inputs.get(t.name)) and p.batch_axis is not None}
        self._batch = batches.pop() if len(batches) == 1 else None
        self._dynamic = any(-1 in d.get("shape_signature", []) for d in ins.values())
        specs_in = tuple(self._spec(t, self._plan.inputs.get(t.name), True) for t in self._inputs)
        specs_out = tuple(self._spec(t, self._plan.outputs.get(t.name), False) for t in self._outputs)
        return Signature(specs_in, specs_out)

    def _tensor(self, name: str, d: dict[str, Any], raw: bool, *, is_input: bool) -> _Tensor:
        scale, zp = quant_params(d, raw)
        sig = [int(s) for s in d.get("shape_signature", d["shape"])]
        plan = self._plan.inputs.get(name) if is_input else self._plan.outputs.get(name)
        dims: list[Dim] = [s if s >= 0 else f"{name}_dim{i}" for i, s in enumerate(sig)]
        if plan is not None and plan.batch_axis is not None:
            dims[plan.batch_axis] = "batch"
        pad_axis = getattr(plan, "pad_axis", None) if is_input else getattr(plan, "crop_axis", None)
        pad_name = getattr(plan, "pad_name", None) if is_input else getattr(plan, "crop_name", None)
        if pad_axis is not None:
            dims[pad_axis] = pad_name or "sequence"
        return _Tensor(name, int(d["index"]), np.dtype(d["dtype"]), tuple(int(s) for s in d["shape"]),
                       scale, zp, tuple(dims))

    def _spec(self, t: _Tensor, plan: Any, is_input: bool) -> TensorSpec:
        dtype = "float32" if t.scale is not None else t.dtype.name
        if not is_input and plan is not None and plan.source_dtype == "int64" and t.dtype.kind in "iu" \
                and t.scale is None:
            dtype = "int64"  # an int64 output narrowed to int32 in the file comes back as int64
        return TensorSpec(t.name, dtype, t.signature_shape)

    # -- running ---------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, Any] | None = None, /, **named: Any) -> dict[str, np.ndarray]:
        """Run on a dict of arrays; with ``feed_layout="nchw"``, NHWC inputs take NCHW arrays."""
        if self._opts.feed_layout == "nchw" and not self._closed:
            feed = dict(inputs) if inputs is not None else {}
            feed.update(named)
            for t in self._inputs:
                value = feed.get(t.name)
                p = self._plan.inputs.get(t.name)
                # an array already channel-last (e.g. synthesized from the signature) is left alone
                if p is not None and p.nhwc and value is not None and np.ndim(value) == 4 \
                        and tuple(np.shape(value)[1:]) != t.shape[1:]:
                    feed[t.name] = np.transpose(np.asarray(value), (0, 2, 3, 1))
            return super().run(feed)
        return super().run(inputs, **named)

    __call__ = run

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        plan = self._plan
        lengths = self._pad_lengths(feed)
        n = self._batch_of(feed)
        size = self._batch or n
        if n == 0:
            raise InputError("the inputs hold no rows (batch of 0)", fix="pass at least one row")
        chunks = []
        for start in range(0, n, size):
            chunk = {}
            for t in self._inputs:
                arr = feed[t.name]
                p = plan.inputs.get(t.name)
                if p is not None and p.batch_axis is not None and self._batch is not None:
                    arr = take_rows(arr, p.batch_axis, start, size)
                if p is not None and p.pad_axis is not None:
                    arr = pad_axis(arr, p.pad_axis, t.shape[p.pad_axis], p.pad_value)
                chunk[t.name] = arr
            chunks.append(self._invoke(chunk))
        rows = min(size, n) if self._batch is not None else None
        out: dict[str, np.ndarray] = {}
        for t in self._outputs:
            p = plan.outputs.get(t.name)
            parts = [c[t.name] for c in chunks]
            if p is not None and p.batch_axis is not None and rows is not None:
                value = np.concatenate(parts, axis=p.batch_axis) if len(parts) > 1 else parts[0]
                value = np.take(value, np.arange(n), axis=p.batch_axis) if value.shape[p.batch_axis] != n else value
            else:
                value = parts[0]
            if p is not None and p.crop_axis is not None and p.crop_name in lengths:
                value = np.take(value, np.arange(lengths[p.crop_name]), axis=p.crop_axis)
            if p is not None and p.source_dtype == "int64" and value.dtype.kind in "iu" and t.scale is None:
                value = value.astype(np.int64)
            out[t.name] = value
        return out

    def _batch_of(self, feed: dict[str, np.ndarray]) -> int:
        sizes = {t.name: feed[t.name].shape[p.batch_axis] for t in self._inputs
                 if (p := self._plan.inputs.get(t.name)) and p.batch_axis is not None}
        if len(set(sizes.values())) > 1:
            raise InputError(f"inputs have different batch sizes: {sizes}",
                             fix="give every input the same number of rows on axis 0")
        if sizes:
            return next(iter(sizes.values()))
        return 1

    def _pad_lengths(self, feed: dict[str, np.ndarray]) -> dict[str, int]:
        seen: dict[str, dict[str, int]] = {}
        for t in self._inputs:
            p = self._plan.inputs.get(t.name)
            if p is None or p.pad_axis is None:
                continue
            length = feed[t.name].shape[p.pad_axis]
            limit = t.shape[p.pad_axis]
            if length > limit:
                raise InputError(f"input {t.name!r} has {length} positions on axis {p.pad_axis}, this "
                                 f"artifact was converted for at most {limit}",
                                 fix=f"truncate {t.name!r} to {limit} (e.g. the tokenizer's max_length), or "
                                 f"convert again with -O tflite.input_shapes={t.name}=...")
            seen.setdefault(p.pad_name or "sequence", {})[t.name] = length
        for axis, by_input in seen.items():
            if len(set(by_input.values())) > 1:
                raise InputError(f"inputs disagree on the length of axis {axis!r}: {by_input}",
                                 fix=f"give every input the same {axis} length")
        return {axis: next(iter(v.values())) for axis, v in seen.items()}

    def _invoke(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self._it
        try:
            if self._runner is not None:
                values = self._runner(**{t.name: self._to_native(t, chunk[t.name]) for t in self._inputs})
                return {t.name: self._from_native(t, values[t.name]) for t in self._outputs}
            arrays = [(t, self._to_native(t, chunk[t.name])) for t in self._inputs]
            resize = [(t, a.shape) for t, a in arrays if a.shape != t.shape]
            if resize:  # only a graph with dynamic dims (a .tflite made elsewhere) gets here
                if not self._dynamic:
                    t, shape = resize[0]
                    raise InputError(f"input {t.name!r} has shape {list(shape)}, this artifact takes "
                                     f"{list(t.shape)}", fix=f"give {t.name!r} shape {list(t.shape)}")
                for t, shape in resize:
                    it.resize_tensor_input(t.index, list(shape))
                    t.shape = shape
                it.allocate_tensors()
            for t, arr in arrays:
                it.set_tensor(t.index, arr)
            it.invoke()
            return {t.name: self._from_native(t, it.get_tensor(t.index)) for t in self._outputs}
        except (ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RuntimeFailure(f"LiteRT failed running {self.path.name}: {first}",
                                 fix="check the input values (e.g. token ids within the vocabulary); run it "
                                 "with `edgekit run` to see the error alone") from e

    @staticmethod
    def _to_native(t: _Tensor, arr: np.ndarray) -> np.ndarray:
        if t.scale is not None and t.zero_point is not None:
            info = np.iinfo(t.dtype)
            arr = np.clip(np.rint(arr / t.scale + t.zero_point), info.min, info.max)
        return np.ascontiguousarray(arr, dtype=t.dtype)

    @staticmethod
    def _from_native(t: _Tensor, arr: np.ndarray) -> np.ndarray:
        if t.scale is not None and t.zero_point is not None:
            return ((arr.astype(np.float32) - t.zero_point) * t.scale).astype(np.float32)
        return arr

    def _close(self) -> None:
        self._it = None
        self._runner = None
        self._delegates = []

    def describe(self) -> dict[str, Any]:
        plan = self._plan
        return {**super().describe(),
                "threads": self.threads or DEFAULT_THREADS,
                "backend": self._backend_name,
                "interpreter": f"{type(self).module} {self.version() or ''}".strip(),
                "probe": self._probe,
                "fixed_batch": self._batch,
                "padded_axes": sorted({p.pad_name or "sequence" for p in plan.inputs.values() if p.pad_axis is not None}),
                "nhwc_inputs": [n for n, p in plan.inputs.items() if p.nhwc],
                "quantized_io": {t.name: "float<->" + t.dtype.name
                                 for t in (*self._inputs, *self._outputs) if t.scale is not None},
                "platform": sys.platform}


def plan_of(path: str | Path) -> Plan:
    """The edgekit plan stored in a ``.tflite`` file (empty for one made elsewhere)."""
    return read_plan(Path(path))
