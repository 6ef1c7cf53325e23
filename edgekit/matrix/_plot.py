"""The matrix as a PNG: accuracy (or parity) against p50 latency, marker area by size.

matplotlib is imported inside the function with the Agg backend (no display needed). The PNG
carries the plotted labels in its ``Description`` text chunk, so a reader can check it without
the JSON beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.report import human_bytes

if TYPE_CHECKING:
    from edgekit.matrix._rows import MatrixRow

LOG_SPREAD = 10.0  # a log latency axis once the slowest point is this many times the fastest
MIN_AREA, MAX_AREA = 40.0, 900.0  # marker area in points^2 for the smallest and largest variant


def y_axis(rows: Sequence[MatrixRow]) -> tuple[str, str]:
    """(row attribute, axis label): the task metric the most rows have, else worst cosine."""
    names = [r.metric_name for r in rows if r.metric is not None and r.metric_name]
    if names:
        name = max(set(names), key=names.count)
        return "metric", name
    return "cosine", "worst cosine to PyTorch"


def plot_matrix(rows: Sequence[MatrixRow], path: Path, title: str) -> list[str]:
    """Write the plot to ``path`` (atomically) and return the labels of the points drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    attr, ylabel = y_axis(rows)
    metric_name = ylabel if attr == "metric" else None
    points = [r for r in rows if r.status == "ok" and r.p50_ms is not None
              and getattr(r, attr) is not None and (metric_name is None or r.metric_name == metric_name)]
    left_out = [r for r in rows if r not in points]
    sizes = [r.size_bytes or 0 for r in points]
    biggest = max(sizes, default=0) or 1
    fig, ax = plt.subplots(figsize=(11, 6), dpi=100)
    try:
        colours = _colours(plt, [r.format for r in points])
        for r, size in zip(points, sizes):
            area = MIN_AREA + (MAX_AREA - MIN_AREA) * size / biggest
            ax.scatter([r.p50_ms], [getattr(r, attr)], s=area, alpha=0.6, color=colours[r.format],
                       marker="*" if r.format == "pytorch" else "o",
                       label=f"{r.label} ({human_bytes(r.size_bytes)})")
            ax.annotate(r.label, (r.p50_ms, getattr(r, attr)), textcoords="offset points",
                        xytext=(6, 6), fontsize=7)
        if points:
            legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
            for handle in legend.legend_handles:  # equal legend markers, the plot shows the sizes
                handle.set_sizes([40.0])
        lat = [r.p50_ms for r in points if r.p50_ms]
        if lat and max(lat) / min(lat) >= LOG_SPREAD:
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("p50 latency (ms)" + (", log scale" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel(ylabel)
        ax.set_title(title + "  (marker area ~ size)")
        ax.grid(True, alpha=0.3)
        if left_out:
            fig.text(0.01, 0.01, _caption(left_out, attr), fontsize=7, va="bottom", wrap=True)
            fig.subplots_adjust(bottom=0.12 + 0.025 * min(len(left_out), 8))
        fig.subplots_adjust(right=0.75)
        labels = [r.label for r in points]
        _save(fig, path, {"Title": title, "Description": f"points: {', '.join(labels)}",
                          "Software": "edgekit"})
    finally:
        plt.close(fig)
    return labels


def _colours(plt: Any, formats: Sequence[str]) -> dict[str, Any]:
    """One colour per format, in order of appearance."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {f: cycle[i % len(cycle)] for i, f in enumerate(dict.fromkeys(formats))}


def _caption(rows: Sequence[MatrixRow], attr: str) -> str:
    lines = []
    for r in rows[:8]:
        why = r.reason if r.status != "ok" else f"no {attr} value"
        lines.append(f"not plotted: {r.label} ({r.status}): {_short(why or '')}")
    if len(rows) > 8:
        lines.append(f"... and {len(rows) - 8} more (see matrix.json)")
    return "\n".join(lines)


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _save(fig: Any, path: Path, metadata: dict[str, str]) -> None:
    from edgekit.fsutil import publish, staging_dir

    with staging_dir(path.parent) as stage:
        fig.savefig(stage / path.name, format="png", metadata=metadata)
        publish([stage / path.name], path.parent)
