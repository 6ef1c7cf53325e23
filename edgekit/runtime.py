"""The one runtime API: ``edgekit.load(path)`` returns a :class:`Model` whatever the format.

Each backend in ``edgekit.runtimes`` subclasses :class:`Model`, implements ``_open``/``_run``
and registers itself; callers never see the differences.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgekit.errors import ArtifactError, ConfigError, DeviceUnavailableError, MissingDependencyError
from edgekit.inputs import InputChecker
from edgekit.integrity import check_integrity
from edgekit.manifest import SUFFIX, Manifest, load_manifest, read_manifest
from edgekit.types import Device, DeviceRequest, Format, ProgressFn, Signature

if TYPE_CHECKING:
    from edgekit.harness import BenchResult

# file suffix -> format, for artifacts that have no manifest beside them
SUFFIXES: dict[str, Format] = {".onnx": Format.ONNX, ".xml": Format.OPENVINO,
                               ".tflite": Format.TFLITE, ".gguf": Format.GGUF}


@dataclass(frozen=True)
class ArtifactRef:
    """A model file on disk, its format and its manifest (if any)."""

    path: Path
    format: Format
    manifest: Manifest | None

    @property
    def size_bytes(self) -> int:
        if self.manifest and self.manifest.size_bytes:
            return self.manifest.size_bytes
        files = self.path.parent.glob(self.path.name + "*")
        return sum(p.stat().st_size for p in files if p.is_file() and not p.name.endswith(SUFFIX))


def resolve_artifact(path: str | Path) -> ArtifactRef:
    """Find the model file, format and manifest for a model file, a manifest or a directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArtifactError(f"edgekit.load takes a path to an artifact, got {path!r} ({type(path).__name__})",
                            fix="pass the model file's path as a str or pathlib.Path, e.g. out/model-fp32.onnx")
    p = Path(path).expanduser()
    if not p.exists():
        raise ArtifactError(f"no such file or directory: {p}", fix="check the path to the artifact")
    if p.is_dir():
        manifests = sorted(p.glob("*" + SUFFIX))
        if len(manifests) != 1:
            found = ", ".join(m.name for m in manifests) or "none"
            raise ArtifactError(f"{p} is a directory holding {len(manifests)} edgekit artifacts ({found})",
                                fix="pass the model file itself, e.g. out/model-fp32.onnx")
        p = manifests[0]
    if p.name.endswith(SUFFIX):
        data = load_manifest(p)
        p = p.with_name(data.artifact)
        if not p.exists():
            raise ArtifactError(f"the manifest names {p.name}, which is missing",
                                fix="copy the model file next to its manifest")
    manifest = read_manifest(p)
    fmt = manifest.format if manifest else SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise ArtifactError(f"{p.name}: unknown model file type {p.suffix!r}",
                            fix=f"edgekit loads: {', '.join(SUFFIXES)}")
    if p.stat().st_size == 0:
        raise ArtifactError(f"{p} is empty", fix="re-run the conversion or copy the file again")
    return ArtifactRef(p, fmt, manifest)


class Model(ABC):
    """A loaded artifact: ``signature``, ``run``/``__call__``, ``benchmark``, ``close``.

    >>> with edgekit.load("out/digits-cnn-int8.onnx") as m:  # doctest: +SKIP
    ...     logits = m.run({"pixels": x})["logits"]
    """

    name: ClassVar[str]  # registry key, e.g. "onnxruntime"
    formats: ClassVar[tuple[Format, ...]]
    module: ClassVar[str]  # the Python module this backend needs
    extra: ClassVar[str]  # the pip extra that installs it
    # True when ``_run`` may be called from several threads at once (the native session is
    # thread-safe, or the backend locks what is not); otherwise ``run`` calls take turns
    concurrent: ClassVar[bool] = False

    def __init__(self, ref: ArtifactRef, *, device: DeviceRequest | str = "cpu", threads: int | None = None,
                 **options: Any) -> None:
        self.path = ref.path
        self.format = ref.format
        self.manifest = ref.manifest
        self.size_bytes = ref.size_bytes
        self.request = DeviceRequest.parse(device)  # what a backend reads; never the raw string
        if self.request.runtime not in (None, self.name):
            raise ConfigError(f"device {str(self.request)!r} is for the {self.request.runtime} runtime, not {self.name}",
                              fix=f"load it with runtime={self.request.runtime!r}, or pass a device {self.name} "
                              f"serves: {self.name}:NAME or cpu/gpu/npu/auto")
        self.device = str(self.request)
        self.threads = threads
        self.options = options
        self._closed = False
        # reentrant: a backend's own public helpers (llama.cpp's logits, generate) take it too
        self._turns = None if self.concurrent else threading.RLock()
        native = self._open()
        self._signature = _merge_signature(native, self.manifest)
        self._check = InputChecker(self._signature)

    # -- what a backend implements -------------------------------------------------------
    @classmethod
    @abstractmethod
    def devices(cls) -> dict[Device, list[str]]:
        """Devices usable here, each with the backend's own names for it."""

    @classmethod
    def version(cls) -> str | None:
        from edgekit.deps import version

        return version(cls.module)

    @abstractmethod
    def _open(self) -> Signature:
        """Load the artifact for ``self.request``; return the signature the runtime sees."""

    @abstractmethod
    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run checked inputs; return outputs by name."""

    def _close(self) -> None:
        """Release native resources."""

    def describe(self) -> dict[str, Any]:
        """What the runtime is using: backend names, threads."""
        return {"runtime": self.name, "device": self.device, "threads": self.threads}

    # -- the shared surface ----------------------------------------------------------------
    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, inputs: Mapping[str, Any] | None = None, /, **named: Any) -> dict[str, np.ndarray]:
        """Run the model on a dict of arrays (or keyword arrays); returns a dict of arrays."""
        if self._closed:
            raise ConfigError(f"{self.path.name} was closed", fix="load it again with edgekit.load()")
        feed = dict(inputs) if inputs is not None else {}
        feed.update(named)
        checked = self._check(feed)
        if self._turns is None:
            return self._run(checked)
        with self._turns:
            return self._run(checked)

    __call__ = run

    def benchmark(self, inputs: Mapping[str, Any] | None = None, *, warmup: int = 10,
                  runs: int | None = None, min_time: float = 2.0, batch: int = 1,
                  dims: Mapping[str, int] | None = None,
                  progress: ProgressFn | None = None) -> BenchResult:
        """Latency statistics of ``run`` on ``inputs`` (synthesized from the signature if None)."""
        from edgekit.harness import measure_model

        return measure_model(self, inputs, warmup=warmup, runs=runs, min_time=min_time,
                             batch=batch, dims=dims, progress=progress)

    # -- task helpers: preprocessing from the manifest and <name>.assets/ (edgekit.tasks) -----
    def classify(self, inputs: Any, *, top_k: int = 1, batch_size: int | None = None) -> list[dict[str, Any]]:
        """Labels for texts (a text classifier) or images (paths, PIL images, arrays): one
        ``{"label", "score", "index", "top": [top_k of those]}`` per input, in order.

        >>> m.classify(["oil prices fell"], top_k=2)[0]["label"]  # doctest: +SKIP
        'crude'
        """
        from edgekit.tasks import pipeline_for

        return pipeline_for(self, "classify")(inputs, top_k=top_k, batch_size=batch_size)

    def embed(self, texts: Any, *, batch_size: int | None = None, normalize: bool | None = None) -> np.ndarray:
        """Sentence vectors (N, D), pooled as the source model pools and L2-normalised.

        >>> m.embed(["a sentence", "another one"]).shape  # doctest: +SKIP
        (2, 384)
        """
        from edgekit.tasks import pipeline_for

        return pipeline_for(self, "embed")(texts, batch_size=batch_size, normalize=normalize)

    def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> Any:
        """Continue ``prompt`` (GGUF artifacts; see :mod:`edgekit.runtimes.llamacpp`)."""
        from edgekit.tasks import task_of, unsupported

        raise unsupported(self, "generate", task_of(self))

    def chat(self, messages: Any, max_tokens: int = 256, **options: Any) -> Any:
        """Answer chat ``messages`` (GGUF artifacts; see :mod:`edgekit.runtimes.llamacpp`)."""
        from edgekit.tasks import task_of, unsupported

        raise unsupported(self, "chat", task_of(self))

    def benchmark_task(self, inputs: Any, *, warmup: int = 5, runs: int | None = None,
                       min_time: float = 2.0, progress: ProgressFn | None = None) -> BenchResult:
        """End-to-end latency of the task on ``inputs`` (texts or images), preprocessing,
        inference and postprocessing reported apart (``result.stages``)."""
        from edgekit.harness import measure_task

        return measure_task(self, inputs, warmup=warmup, runs=runs, min_time=min_time, progress=progress)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path.name} on {self.device}>"

    # -- helpers for backends --------------------------------------------------------------
    def _unavailable(self, wanted: str) -> DeviceUnavailableError:
        have = {d.value: names for d, names in self.devices().items()}
        listing = "; ".join(f"{d} ({', '.join(n)})" for d, n in have.items()) or "none"
        return DeviceUnavailableError(f"device {wanted!r} is not available to {self.name} here",
                                      fix=f"available devices: {listing}")


def _merge_signature(native: Signature, manifest: Manifest | None) -> Signature:
    """The runtime's signature, enriched with the manifest's example shapes and value ranges.

    Where the runtime sees a dynamic axis but the manifest records a fixed size (an OpenVINO IR
    whose file leaves every axis dynamic), the manifest's size is the one inputs are checked against."""
    if manifest is None:
        return native
    recorded = {s.name: s for s in manifest.signature.inputs}
    inputs = []
    for spec in native.inputs:
        rec = recorded.get(spec.name)
        shape = spec.shape
        if rec is not None and len(rec.shape) == len(shape):
            shape = tuple(r if isinstance(d, str) and (isinstance(r, int) or d == "?") else d
                          for d, r in zip(shape, rec.shape))
        inputs.append(type(spec)(spec.name, spec.dtype, shape,
                                 rec.example_shape if rec else None, rec.value_range if rec else None))
    return Signature(tuple(inputs), native.outputs)


def runtime_for(fmt: Format, runtime: str | None = None) -> type[Model]:
    """The runtime class for ``fmt``: the named one, or the first installed one whose own format
    it is (a runtime that also reads it, like OpenVINO for ONNX, only when asked by name)."""
    from edgekit.runtimes import RUNTIMES

    if runtime is not None:
        cls = RUNTIMES.get(runtime)
        if fmt not in cls.formats:
            raise ConfigError(f"runtime {runtime!r} does not run {fmt.value} artifacts",
                              fix=f"it runs: {', '.join(f.value for f in cls.formats)}")
        candidates = readers = [cls]
    else:
        # a runtime's first format is its own; one that also reads other formats (OpenVINO reads
        # ONNX) is used for them only when asked by name, or when no native runtime is registered
        readers = [cls for _, cls in RUNTIMES.items() if fmt in cls.formats]
        candidates = [cls for cls in readers if cls.formats[0] is fmt] or readers
    if not candidates:
        raise ConfigError(f"no runtime is registered for {fmt.value} artifacts",
                          fix="install a plugin that registers one")
    from edgekit.deps import available

    for cls in candidates:
        if available(cls.module):
            return cls
    first = candidates[0]
    others = [cls.name for cls in readers if cls not in candidates and available(cls.module)]
    raise MissingDependencyError(
        f"running {fmt.value} artifacts needs {first.module!r}, which is not installed",
        fix=f"pip install 'edgekit[{first.extra}]'" + (f", or load it with runtime={others[0]!r}" if others else ""))


def load(path: str | Path, device: str | DeviceRequest = "cpu", *, runtime: str | None = None,
         threads: int | None = None, verify: bool = True, **options: Any) -> Model:
    """Load an artifact for inference on ``device``: cpu, gpu, npu, auto, or ``RUNTIME:NAME`` with a
    runtime's own device name (``openvino:GPU.1``), which also picks that runtime (see
    :class:`~edgekit.types.DeviceRequest`).

    With a manifest beside the model, every file it lists is checked against the recorded size and
    sha256 first (hashed once per file identity, see :func:`check_integrity`); ``verify=False``
    skips that and runs the files as they are.

    >>> m = edgekit.load("out/digits-cnn-fp32.onnx", device="cpu", threads=2)  # doctest: +SKIP
    >>> m.run({"pixels": x})["logits"].shape  # doctest: +SKIP
    """
    from edgekit.values import threads_value

    threads = threads_value(threads)
    request = DeviceRequest.parse(device)
    if request.runtime is not None:
        if runtime not in (None, request.runtime):
            raise ConfigError(f"device {str(request)!r} names the {request.runtime} runtime, but runtime={runtime!r}",
                              fix=f"drop runtime=, or write device='{runtime}:NAME' with a {runtime} device name")
        runtime = request.runtime
    ref = resolve_artifact(path)
    cls = runtime_for(ref.format, runtime)
    if verify and ref.manifest is not None:
        check_integrity(ref.path, ref.manifest)
    return cls(ref, device=request, threads=threads, **options)
