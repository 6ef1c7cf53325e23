"""What a recipe run measured: one row per stage (setting, metric, drop from the original, verdict)
and the report every manifest of the run stores."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekit.optimize.recipe import Recipe


@dataclass
class StageReport:
    """One measured stage: its setting, the metric, the drop from the original and the verdict."""

    stage: str  # "original", "prune", "distill", or "<format> <precision>" for an artifact
    setting: dict[str, Any] = field(default_factory=dict)
    metric: dict[str, Any] | None = None
    drop: float | None = None  # from the original, positive = worse, in metric units
    max_drop: float | None = None
    passed: bool | None = None  # None: not gated (no allowed drop, or nothing measured)
    attempt: int = 1
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        name = (self.metric or {}).get("name", "metric")
        return (f"stage {self.stage} ({_setting(self.setting)}): {name} dropped {self.drop:.4g} from the "
                f"original, more than the allowed {self.max_drop:.4g}")


def _setting(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in setting.items()) or "as given"


@dataclass
class PipelineReport:
    """Everything a recipe run measured; ``to_dict`` is what manifests and ``--json`` hold."""

    recipe: Recipe
    metric: str | None = None
    data: str | None = None
    stages: list[StageReport] = field(default_factory=list)
    status: str = "running"  # running | passed | stopped

    @property
    def failed(self) -> list[StageReport]:
        return [s for s in self.stages if s.passed is False]

    def torch_dict(self) -> dict[str, Any]:
        """The recipe and the stages before conversion (what every artifact shares)."""
        return {"recipe": self.recipe.to_dict(), "metric": self.metric, "data": self.data,
                "stages": [s.to_dict() for s in self.stages]}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "edgekit.pipeline/1", **self.torch_dict(), "status": self.status}

    def rows(self) -> list[tuple[str, ...]]:
        return report_rows(self.to_dict())


REPORT_COLUMNS = ("stage", "setting", "metric", "drop", "allowed drop", "gate")


def report_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """A report dict (``PipelineReport.to_dict``, ``GateError.report``) as text rows of
    :data:`REPORT_COLUMNS`, for a table."""
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    verdict = {True: "passed", False: "FAILED", None: "-"}
    rows = []
    for s in report.get("stages", []):
        metric = s.get("metric") or {}
        value = f"{metric['name']} {f(metric.get('value'))}" if metric else "-"
        rows.append((s["stage"], _setting(s.get("setting") or {}), value, f(s.get("drop")), f(s.get("max_drop")),
                     verdict[s.get("passed")]))
    return rows
