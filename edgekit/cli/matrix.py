"""``edgekit matrix SRC``: every format x precision converted, evaluated and timed against eager."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli._common import (
    errors,
    note,
    parse_dims,
    parse_shapes,
    progress_bar,
    publish,
    show,
    table_options,
    timing_options,
)


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--to", "targets", help="Formats, comma separated (default: every installed one).")
@click.option("--precision", "precisions", help="Precisions, comma separated (default: each format's that apply).")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration data, as for convert.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path),
              help="Labelled data (.npz with 'labels', or .jsonl text+label) for the accuracy column.")
@click.option("--out", default="edgekit-matrix", show_default=True, type=click.Path(path_type=Path),
              help="Output directory: the artifacts, matrix.json and matrix.png.")
@click.option("--resume", is_flag=True, help="Keep the variants OUT/matrix.json already measured.")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write OUT/matrix.png.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run every conversion and benchmark as a Ray task: 'local' starts Ray here, 'auto' joins "
              "the running cluster, or ray://HOST:10001 (pip install 'edgekit[ray]'; docs/scale.md).")
@click.option("--max-parallel", type=click.IntRange(min=1), help="--ray: at most this many tasks at once "
              "(default: the cluster's CPUs).")
@click.option("--on", "on", metavar="DEVICE", help="Time every artifact on this device (a name saved with "
              "`edgekit devices add`) instead of here; conversions and accuracy stay here.")
@click.option("--weights", type=click.Path(path_type=Path),
              help="Weights for a package.module:factory source (.safetensors or a state dict).")
@click.option("--example", type=click.Path(path_type=Path), help="Example inputs (.npz) for a factory source.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=1x3x224x224[:dtype]",
              help="Example input shape for a factory source (repeatable).")
@timing_options
@table_options
def matrix(sources: tuple[str, ...], targets: str | None, precisions: str | None, calib: Path | None,
           eval_data: Path | None, out: Path, resume: bool, plot: bool, device: str, runtime: str | None,
           threads: int | None, batch: int, dims: tuple[str, ...], input_path: Path | None, warmup: int,
           runs: int | None, min_time: float, isolated: bool, save_path: Path | None, as_json: bool,
           ray_address: str | None = None, max_parallel: int | None = None, fmt: str = "table",
           wide: bool = False, on: str | None = None, weights: Path | None = None, example: Path | None = None,
           shapes: tuple[str, ...] = ()) -> None:
    """Convert SOURCE to every format x precision that applies, evaluate and time each variant and a
    PyTorch eager baseline: one row per variant (failed ones with the reason), OUT/matrix.json and a plot.

    SOURCE is anything ``edgekit convert`` takes (builtin:digits-cnn, a Hugging Face folder, a .pt2).
    With several SOURCEs each gets its own OUT/<name>/ folder, matrix.json and table.
    """
    from edgekit.matrix import BenchSettings
    from edgekit.matrix import matrix as run_matrix
    from edgekit.report import matrix_table

    if max_parallel is not None and ray_address is None:
        raise click.UsageError("--max-parallel applies with --ray")
    with errors():
        bench = BenchSettings(device=device, runtime=runtime, threads=threads, batch=batch, warmup=warmup,
                              runs=runs, min_time=min_time, isolated=isolated, dims=parse_dims(dims), on=on)
        examples = parse_shapes(shapes)  # a package.module:factory source needs example inputs
        if example is not None:
            from edgekit.io import read_npz

            examples = read_npz(example)
        results = []
        if ray_address is not None and len(sources) > 1:  # one Ray for every source, not one each
            from edgekit.matrix import connect_ray

            connect_ray(ray_address, max_parallel)
        for source in sources:
            folder = out if len(sources) == 1 else out / source_folder(source)
            with progress_bar(not as_json) as progress:
                results.append(run_matrix(source, examples, weights=weights, targets=targets, precisions=precisions, calib=calib,
                                          eval_data=eval_data, out=folder, resume=resume, bench=bench,
                                          inputs=input_path, plot=plot, progress=progress, ray=ray_address,
                                          max_parallel=max_parallel))
        payload = results[0].to_dict() if len(results) == 1 else {
            "schema": "edgekit.matrix-set/1", "matrices": [r.to_dict() for r in results]}
        if publish(payload, save_path, as_json):
            for result in results:
                show(matrix_table(result), fmt, wide)
                if result.plot_path:
                    note(f"plot: {result.plot_path}  results: {result.path}", style="")
                elif result.plot_error:
                    note(f"no plot: {result.plot_error}", style="yellow")
        if any(r.failed for r in results):
            raise SystemExit(1)


def source_folder(source: str) -> str:
    """A folder name for one of several sources: ``models/a/`` -> ``a``, ``builtin:digits-cnn`` -> ``digits-cnn``."""
    name = Path(source.rstrip("/\\")).name or source
    return name.split(":")[-1] or "source"
