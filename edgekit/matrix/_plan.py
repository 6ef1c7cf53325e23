"""Which format x precision variants a matrix run builds, and why the others are left out.

Asked-for variants (``targets``/``precisions`` given) that cannot be built are rows with the
reason, so the table answers "why is there no tflite int4?". Variants edgekit chose on its own
that do not apply (static int8 without calibration data, GGUF for a model that is not a causal
language model) are listed as skipped instead of filling the table with failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.errors import EdgekitError, MissingDependencyError
from edgekit.types import Format, Precision

if TYPE_CHECKING:
    from edgekit.sources import ModelSource

# format -> the only tasks it applies to when edgekit picks the formats; absent: every task.
# GGUF holds causal language models (llama.cpp), see converters/gguf.py.
FORMAT_TASKS: dict[Format, frozenset[str]] = {Format.GGUF: frozenset({"text-generation"})}


@dataclass(frozen=True)
class Variant:
    """One planned cell of the matrix; ``problem`` is set when it cannot be built at all."""

    format: Format
    precision: Precision
    problem: str | None = None
    stage: str | None = None  # where it failed before converting: "plan" | "dependencies"


@dataclass(frozen=True)
class Skipped:
    """A variant that does not apply to this model and data, with the reason."""

    format: str
    precision: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "precision": self.precision, "reason": self.reason}


def reason_of(e: EdgekitError) -> str:
    """An error as one line for a row: the problem, then the fix."""
    return f"{e.problem}; fix: {e.fix}" if e.fix else e.problem


def plan(source: ModelSource, targets: Sequence[str | Format] | str | None,
         precisions: Sequence[str | Precision] | str | None, has_calibration: bool
         ) -> tuple[list[Variant], list[Skipped]]:
    """Variants in table order (formats, then precisions), and what was skipped and why."""
    from edgekit.converters import CONVERTERS

    picked = targets is None
    formats = [f for f, _ in CONVERTERS.items()] if picked else Format.parse_list(targets)
    wanted = Precision.parse_list(precisions) if precisions is not None else None
    variants: list[Variant] = []
    skipped: list[Skipped] = []
    for fmt in formats:
        conv = CONVERTERS.get(fmt)()
        tasks = FORMAT_TASKS.get(fmt)
        if picked and tasks is not None and source.task not in tasks:
            skipped.append(Skipped(fmt.value, None, f"{fmt.value} applies to {', '.join(sorted(tasks))} "
                                   f"models; this one is {source.task or 'a plain PyTorch model'}"))
            continue
        cells: list[Variant] = []
        for p in wanted if wanted is not None else conv.precisions:
            if p not in conv.precisions:  # only reachable when asked for
                cells.append(Variant(fmt, p, f"{fmt.value} does not support {p.value}; it supports "
                                     f"{', '.join(x.value for x in conv.precisions)}", "plan"))
            elif conv.needs_calibration(p) and not has_calibration:
                why = f"{p.value} on {fmt.value} needs calibration data; fix: pass --calib data"
                if wanted is None:
                    skipped.append(Skipped(fmt.value, p.value, why))
                else:
                    cells.append(Variant(fmt, p, why, "plan"))
            else:
                cells.append(Variant(fmt, p))
        buildable = [v.precision for v in cells if v.problem is None]
        try:
            conv.check(buildable)
        except MissingDependencyError as e:
            cells = [Variant(v.format, v.precision, v.problem or reason_of(e), v.stage or "dependencies")
                     for v in cells]
        variants += cells
    return variants, skipped
