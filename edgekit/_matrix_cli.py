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
    from edgekit.cli import _emit_json, _errors, _parse_kv, _progress, console, err
    from edgekit.errors import ConfigError
    from edgekit.fsutil import write_json_atomic
    from edgekit.matrix import BenchSettings, matrix
    from edgekit.report import matrix_table

    with _errors():
        try:
            sizes = {k: int(v) for k, v in _parse_kv(dims, "--dim").items()}
        except ValueError as e:
            raise ConfigError(f"--dim takes NAME=SIZE with a whole number: {e}",
                              fix="write e.g. --dim sequence=128") from e
        bench = BenchSettings(**settings, dims=sizes)
        with _progress(not as_json) as progress:
            result = matrix(source, targets=targets, precisions=precisions, calib=calib, eval_data=eval_data,
                            out=out or "edgekit-matrix", resume=resume, bench=bench, inputs=input_path,
                            plot=plot, progress=progress)
        payload = result.to_dict()
        if save_path:
            write_json_atomic(save_path, payload)
        if as_json:
            _emit_json(payload)
        else:
            console.print(matrix_table(result))
            if result.plot_path:
                console.print(f"plot: {result.plot_path}  results: {result.path}")
            elif result.plot_error:
                err.print(f"[yellow]no plot:[/] {result.plot_error}", highlight=False)
        if result.failed:
            raise SystemExit(1)
