"""Converters, one module per target format, each registered under its :class:`Format`.

A converter exports the source once (``export``), then builds each precision from that base
(``build``) into a staging directory; ``edgekit.convert`` verifies and publishes the result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgekit.deps import require
from edgekit.errors import ConfigError
from edgekit.registry import Registry
from edgekit.types import Format, Precision, ProgressFn

if TYPE_CHECKING:
    from edgekit.calib import CalibrationSet, EvalSet
    from edgekit.manifest import Verification
    from edgekit.sources import ModelSource
    from edgekit.types import Signature
    from edgekit.verify import Reference


# tasks whose models are transformers over tokens: static int8 (calibrated activations) costs
# them accuracy (all-MiniLM-L6-v2: embedding cosine 0.927 static vs 0.992 dynamic, docs/benchmarks.md)
TEXT_TASKS = frozenset({"text-classification", "feature-extraction", "text-generation",
                        "token-classification", "fill-mask"})


@dataclass
class BuildContext:
    """What a converter needs for one conversion: the source, data, options and a work dir."""

    source: ModelSource
    options: Any  # the converter's own frozen options dataclass
    workdir: Path
    calibration: CalibrationSet | None = None
    progress: ProgressFn | None = None
    evaluation: EvalSet | None = None  # labelled data (--eval), for accuracy-aware quantization

    def report(self, task: str, done: int, total: int | None = None) -> None:
        if self.progress is not None:
            self.progress(task, done, total)


@dataclass
class Built:
    """A finished variant in the staging dir: the model file, its companions, how it was made."""

    model: Path
    companions: list[Path] = field(default_factory=list)
    route: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    runtime_hints: dict[str, Any] = field(default_factory=dict)  # e.g. the precision hint to run with

    @property
    def files(self) -> list[Path]:
        """Companions first, the model last: its presence means the rest is in place."""
        return [*self.companions, self.model]


class Converter(ABC):
    """Base of every format converter."""

    format: ClassVar[Format]
    precisions: ClassVar[tuple[Precision, ...]]
    suffix: ClassVar[str]
    extra: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    distributions: ClassVar[tuple[str, ...]]  # versions recorded in the manifest
    Options: ClassVar[type]
    # how verification loads each variant: runtime options (e.g. an f32 precision hint), and
    # whether it runs in a fresh process that has not imported the converter's stack
    verify_options: ClassVar[dict[str, Any]] = {}
    verify_isolated: ClassVar[bool] = False
    # whether verification reads the original's outputs on every reference feed (computed once,
    # before export, and kept); False for a format that reads a few once and keeps its own (GGUF)
    reference_outputs: ClassVar[bool] = True

    def check(self, precisions: list[Precision]) -> None:
        """Fail early, before any work, on an unsupported precision or a missing package."""
        bad = [p.value for p in precisions if p not in self.precisions]
        if bad:
            raise ConfigError(f"{self.format.value} does not support precision(s) {', '.join(bad)}",
                              fix=f"{self.format.value} supports: "
                              f"{', '.join(p.value for p in self.precisions)}")
        for module in self.requires:
            require(module, self.extra, f"converting to {self.format.value}")

    def needs_calibration(self, precision: Precision) -> bool:
        return False

    def default_precisions(self, has_calibration: bool, task: str | None) -> list[Precision]:
        """What ``edgekit convert`` builds when no precision is asked for: fp32, one int8 (static
        when there is calibration data and the model is not a text transformer, else weight-only
        or dynamic) and int4, each where this format supports it."""
        static = has_calibration and task not in TEXT_TASKS
        int8 = [Precision.INT8] if static else [Precision.INT8_DYNAMIC, Precision.INT8_WEIGHTS]
        chosen = [Precision.FP32, next((p for p in int8 if p in self.precisions), None), Precision.INT4]
        return [p for p in chosen if p is not None and p in self.precisions]

    @abstractmethod
    def export(self, ctx: BuildContext) -> Any:
        """Export the source once; the result is the base every precision is built from."""

    @abstractmethod
    def build(self, base: Any, precision: Precision, stem: str, ctx: BuildContext) -> Built:
        """Write the ``precision`` variant as ``<stem><suffix>`` (plus companions) in ``ctx.workdir``."""

    def native_exclusions(self, base: Any) -> dict[str, Any]:
        """This format's own converter option that keeps the layers named by ``exclude_layers`` (when
        ``base`` was exported with them) unquantized, e.g. ``{"nodes_to_exclude": [...]}``."""
        raise ConfigError(f"{self.format.value} cannot keep single layers unquantized",
                          fix="leave exclude_layers out for this format")

    def with_exclusions(self, base: Any, layers: list[str], ctx: BuildContext) -> Any:
        """``base`` set to keep ``layers`` (PyTorch names) unquantized in the next ``build``,
        without exporting again (the accuracy-aware int8 loop, :mod:`edgekit.optimize.int8_loop`)."""
        raise ConfigError(f"{self.format.value} cannot keep single layers unquantized",
                          fix="use -O int8_loop=false, or another precision for this format")

    def verify(self, built: Built, precision: Precision, ctx: BuildContext,
               reference: Reference) -> tuple[Verification, Signature] | None:
        """Verify ``built`` this format's own way and return (verification, native signature), or
        None for the generic check: every reference feed through ``edgekit.load``, each output
        compared. A format whose outputs on padded reference feeds are not comparable (a causal
        LM run one sequence at a time) overrides this."""
        return None


CONVERTERS: Registry[Format, type[Converter]] = Registry(
    "converter", "edgekit.converters", "edgekit.converters")
