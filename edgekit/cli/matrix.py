"""``edgekit matrix SRC``: every format x precision converted, evaluated and timed against eager."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli._common import (
    errors,
    note,
    parse_dims,
    progress_bar,
    publish,
    show,
    table_options,
    timing_options,
)


@click.command()
@click.argument("source")
@click.option("--to", "targets", help="Formats, comma separated (default: every installed one).")
@click.option("--precision", "precisions", help="Precisions, comma separated (default: each format's that apply).")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration data, as for convert.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path),
              help="Labelled data (.npz with 'labels', or .jsonl text+label) for the accuracy column.")
@click.option("--out", default="edgekit-matrix", show_default=True, type=click.Path(path_type=Path),
              help="Output directory: the artifacts, matrix.json and matrix.png.")
@click.option("--resume", is_flag=True, help="Keep the variants OUT/matrix.json already measured.")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write OUT/matrix.png.")
@timing_options
@table_options
def matrix(source: str, targets: str | None, precisions: str | None, calib: Path | None,
           eval_data: Path | None, out: Path, resume: bool, plot: bool, device: str, runtime: str | None,
           threads: int | None, batch: int, dims: tuple[str, ...], input_path: Path | None, warmup: int,
           runs: int | None, min_time: float, isolated: bool, save_path: Path | None, as_json: bool,
           fmt: str = "table", wide: bool = False) -> None:
    """Convert SOURCE to every format x precision that applies, evaluate and time each variant and a
    PyTorch eager baseline: one row per variant (failed ones with the reason), OUT/matrix.json and a plot.

    SOURCE is anything ``edgekit convert`` takes (builtin:digits-cnn, a Hugging Face folder, a .pt2).
    """
    from edgekit.matrix import BenchSettings
    from edgekit.matrix import matrix as run_matrix
    from edgekit.report import matrix_table

    with errors():
        bench = BenchSettings(device=device, runtime=runtime, threads=threads, batch=batch, warmup=warmup,
                              runs=runs, min_time=min_time, isolated=isolated, dims=parse_dims(dims))
        with progress_bar(not as_json) as progress:
            result = run_matrix(source, targets=targets, precisions=precisions, calib=calib, eval_data=eval_data,
                                out=out, resume=resume, bench=bench, inputs=input_path, plot=plot,
                                progress=progress)
        if publish(result.to_dict(), save_path, as_json):
            show(matrix_table(result), fmt, wide)
            if result.plot_path:
                note(f"plot: {result.plot_path}  results: {result.path}", style="")
            elif result.plot_error:
                note(f"no plot: {result.plot_error}", style="yellow")
        if result.failed:
            raise SystemExit(1)
