"""Rendering a :class:`edgekit.report.Sheet`: a table fitted to the terminal, plain text when stdout
is a pipe or a file (no box drawing, no colour), Markdown or CSV with ``--format``.

In a terminal, the first column (artifact or variant names) is never shortened; when the table is
wider than the terminal, the columns marked droppable give way (the least useful first) and a note
names them; ``--wide`` keeps every column. Cells are rich ``Text``, never markup, so brackets in
names, shapes and reasons print as they are.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekit.report import STATUS_STYLE, Column, Sheet

FORMATS = ("table", "md", "csv")


def show(obj: Sheet | Any, target: Console, fmt: str = "table", wide: bool = False) -> None:
    """Print a Sheet (or any rich renderable) on ``target`` in the chosen format."""
    if not isinstance(obj, Sheet):
        if isinstance(obj, Table) and not target.is_terminal:
            obj.box = None  # a pipe or a CI log: aligned plain text
        target.print(obj)
        return
    if fmt == "md":
        _write(target, markdown(obj))
    elif fmt == "csv":
        _write(target, csv_text(obj))
    elif target.is_terminal:
        table, hidden, legend = fitted(obj, target.width, wide)
        for line in legend:
            target.print(Text(line), soft_wrap=True)
        width = target.width
        if wide:  # the whole table at its own width, even where the terminal is narrower
            target.width = max(width, table_width(obj, list(range(len(obj.columns)))) + 2 * len(obj.columns))
        try:
            target.print(table)
        finally:
            target.width = width
        for line in notes(obj, hidden):
            target.print(Text(line, style="dim"))  # prose: wrapped to the terminal
    else:
        _write(target, plain(obj))


def _write(target: Console, text: str) -> None:
    target.file.write(text if text.endswith("\n") else text + "\n")
    target.file.flush()


def _min_width(sheet: Sheet, i: int) -> int:
    """The narrowest a column can get without breaking a cell: whole cells, headers wrapped by word."""
    col = sheet.columns[i]
    header = len(col.name) if i == 0 else max(len(w) for w in col.name.split())
    return max([header, *(len(r[i]) for r in sheet.rows)])


def table_width(sheet: Sheet, keep: list[int]) -> int:
    """Width of the boxed table with these columns: cells plus one space of padding and a rule each."""
    return sum(_min_width(sheet, i) for i in keep) + 3 * len(keep) + 1


def fitted(sheet: Sheet, width: int, wide: bool = False) -> tuple[Table, list[str], list[str]]:
    """A rich table for a ``width``-column terminal, the names of the columns left out, and the
    lines to print above it: when the names alone leave no room for the essential columns, they
    are listed in full above a table of numbered rows."""
    essential = [i for i, c in enumerate(sheet.columns) if c.drop == 0]
    if wide or not sheet.rows or table_width(sheet, essential) <= width:
        table, hidden = _fit(sheet, width, wide)
        return table, hidden, []
    numbered = Sheet("", [Column("#"), *sheet.columns[1:]],
                     [[str(k + 1), *row[1:]] for k, row in enumerate(sheet.rows)])
    table, hidden = _fit(numbered, width, wide)
    table.title = None
    legend = [sheet.title] + [f"{k + 1:>3}  {row[0]}" for k, row in enumerate(sheet.rows)]
    return table, hidden, legend


def _fit(sheet: Sheet, width: int, wide: bool) -> tuple[Table, list[str]]:
    keep = list(range(len(sheet.columns)))
    hidden: list[str] = []
    while not wide and table_width(sheet, keep) > width:
        droppable = [i for i in keep if sheet.columns[i].drop > 0]
        if not droppable:
            break
        level = max(sheet.columns[i].drop for i in droppable)
        victim = [i for i in droppable if sheet.columns[i].drop == level][-1]
        keep.remove(victim)
        hidden.insert(0, sheet.columns[victim].name)
    t = Table(title=Text(sheet.title), title_justify="left")
    natural = sum(max([len(sheet.columns[i].name), *(len(r[i]) for r in sheet.rows)]) for i in keep)
    stack = not wide and natural + 3 * len(keep) + 1 > width  # headers a word a line: cells keep their width
    for i in keep:
        col = sheet.columns[i]
        header = col.name.replace(" ", "\n") if stack and i else col.name
        # no cell is ever cut: each column at least as wide as its widest cell (names on one line)
        t.add_column(Text(header), justify=col.justify, no_wrap=True,  # type: ignore[arg-type]
                     min_width=_min_width(sheet, i))
    for row in sheet.rows:
        t.add_row(*(Text(row[i], style=STATUS_STYLE.get(row[i], "") if sheet.columns[i].name == "status" else "")
                    for i in keep))
    return t, hidden


def notes(sheet: Sheet, hidden: list[str] | None = None) -> list[str]:
    """Lines under a table: why rows failed, the columns left out, the sheet's own notes."""
    lines = [f"{sheet.rows[i][0]}: {reason}" for i, reason in sorted(sheet.reasons.items())]
    if hidden:
        lines.append(f"not shown at this width: {', '.join(hidden)} (--wide shows every column)")
    return lines + list(sheet.notes)


def plain(sheet: Sheet) -> str:
    """Every column, aligned with spaces: for pipes, files and CI logs."""
    rows = [[c.name for c in sheet.columns], *sheet.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(sheet.columns))]
    lines = [sheet.title]
    for row in rows:
        cells = [cell.ljust(w) if col.justify == "left" else cell.rjust(w)
                 for cell, w, col in zip(row, widths, sheet.columns)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines + notes(sheet))


def _with_reasons(sheet: Sheet) -> tuple[list[str], list[list[str]]]:
    header = [c.name for c in sheet.columns]
    if not sheet.reasons:
        return header, sheet.rows
    return header + ["reason"], [row + [sheet.reasons.get(i, "")] for i, row in enumerate(sheet.rows)]


def markdown(sheet: Sheet) -> str:
    """A GitHub-flavoured Markdown table (every column, a reason column when a row failed)."""
    header, rows = _with_reasons(sheet)
    align = [":--" if c.justify == "left" else "--:" for c in sheet.columns]
    align += ["---"] * (len(header) - len(align))

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [f"**{sheet.title}**", "", line(header), "| " + " | ".join(align) + " |", *map(line, rows)]
    return "\n".join(out + (["", *sheet.notes] if sheet.notes else []))


def csv_text(sheet: Sheet) -> str:
    """RFC 4180 CSV: a header row, then one row per artifact or variant."""
    header, rows = _with_reasons(sheet)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
