"""``edgekit compare OLD.json NEW.json``: deltas between two bench or matrix runs, a CI gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.cli._common import emit_json, errors, note, show, table_options


def compare_table(c: Any) -> Any:
    """One row per matched (or unmatched) artifact: p50 and metric, old and new, and the verdict."""
    from edgekit.compare import host_line
    from edgekit.report import Sheet, columns, num

    t = Sheet(f"edgekit compare: {c.old_path} -> {c.new_path}",
              columns("artifact<0 status<0 old_p50_ms>1 new_p50_ms>1 p50_change>0 old_metric>2 new_metric>2 "
                    "metric_loss>0 matched_by<2"))
    for d in c.deltas:
        o, n = d.old, d.new
        t.add(d.name, d.verdict, num(o.p50_ms if o else None), num(n.p50_ms if n else None),
              num(d.latency_change, "{:+.1%}"), num(o.metric if o else None, "{:.4f}"),
              num(n.metric if n else None, "{:.4f}"), num(d.metric_change, "{:+.1%}"),
              d.matched_by or "-", reason="; ".join(d.regressions) or None)
    t.notes = [f"regression: p50 more than {c.max_regression:.1%} slower, metric more than "
               f"{c.max_metric_drop:.1%} worse, a row that failed or went missing",
               f"old: {host_line(c.old_host)}", f"new: {host_line(c.new_host)}"]
    return t


@click.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--max-regression", default="10%", show_default=True,
              help="Allowed p50 latency growth (and metric loss, unless --max-metric-drop), e.g. 10%.")
@click.option("--max-metric-drop", help="Allowed task-metric loss as a share of the old value, e.g. 1% "
              "(default: --max-regression).")
@click.option("--json", "as_json", is_flag=True, help="Print the deltas as JSON.")
@table_options
def compare(old: Path, new: Path, max_regression: str, max_metric_drop: str | None, as_json: bool,
            fmt: str = "table", wide: bool = False) -> None:
    """Compare NEW results against OLD (each an `edgekit bench --save` file or a matrix.json): rows
    matched by artifact sha256, then by name. Exits 1 when a row regressed beyond the threshold,
    so it can gate CI: edgekit compare main.json pr.json --max-regression 10%.
    """
    from edgekit.compare import compare as run_compare
    from edgekit.compare import parse_share

    with errors():
        result = run_compare(old, new, max_regression=parse_share(max_regression),
                             max_metric_drop=parse_share(max_metric_drop, "--max-metric-drop")
                             if max_metric_drop is not None else None)
    if as_json:
        emit_json(result.to_dict())
    else:
        show(compare_table(result), fmt, wide)
    bad = [d for d in result.deltas if d.regressions]
    if bad:
        note(f"{len(bad)} regression(s): " + "; ".join(f"{d.name}: {d.regressions[0]}" for d in bad),
             style="red")
        raise SystemExit(1)
    note(f"no regression beyond {result.max_regression:.1%} in {len(result.deltas)} row(s)", style="green")
