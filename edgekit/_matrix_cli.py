"""``edgekit bench --matrix SRC``: run the matrix and render it (table, JSON, plot path).

Kept out of ``cli.py`` so the bench command only gains its options and one branch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_matrix_command(source: str, *, targets: str | None, precisions: str | None, calib: Path | None,
                       eval_data: Path | None, out: Path | None, resume: bool, plot: bool,
                       input_path: Path | None, save_path: Path | None, as_json: bool,
                       dims: tuple[str, ...], settings: dict[str, Any]) -> None:
    """Run :func:`edgekit.matrix.matrix` with progress on stderr; exit 1 when a row failed."""
    from edgekit.cli import _dims, _errors, _progress, _publish, console, err
    from edgekit.matrix import BenchSettings, matrix
    from edgekit.report import matrix_table

    with _errors():
        bench = BenchSettings(**settings, dims=_dims(dims))
        with _progress(not as_json) as progress:
            result = matrix(source, targets=targets, precisions=precisions, calib=calib, eval_data=eval_data,
                            out=out or "edgekit-matrix", resume=resume, bench=bench, inputs=input_path,
                            plot=plot, progress=progress)
        if _publish(result.to_dict(), save_path, as_json):
            console.print(matrix_table(result))
            if result.plot_path:
                console.print(f"plot: {result.plot_path}  results: {result.path}")
            elif result.plot_error:
                err.print(f"[yellow]no plot:[/] {result.plot_error}", highlight=False)
        if result.failed:
            raise SystemExit(1)
