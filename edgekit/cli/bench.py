"""``edgekit bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.cli._common import (
    errors,
    parse_dims,
    progress_bar,
    publish,
    show,
    table_options,
    task_inputs,
    timing_options,
)
from edgekit.cli.devices import on_option, remote


def stages_table(results: list[Any]) -> Any:
    """Per artifact, the p50 of each stage of a task benchmark (--text/--image)."""
    from edgekit.harness import STAGES
    from edgekit.report import Column, Sheet

    t = Sheet("end to end, p50 ms per call (all inputs)",
              [Column("artifact", "left"), Column("task", "left", 1), Column("items"),
               *(Column(s) for s in STAGES), Column("total")])
    for r in results:
        if r.stages and r.latency:
            t.add(r.artifact.rsplit("/", 1)[-1], r.task or "-", str(r.batch),
                  *(f"{r.stages[s].p50_ms:.3f}" for s in STAGES), f"{r.latency.p50_ms:.3f}")
    return t


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@timing_options
@click.option("--text", "texts", multiple=True, help="Measure the task end to end on this text (repeatable): "
              "tokenizing, inference and postprocessing timed apart.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="Measure the task end to end on this image file (repeatable), preprocessing timed apart.")
@on_option
@table_options
def bench(artifacts: tuple[Path, ...], device: str, runtime: str | None, threads: int | None, batch: int,
          dims: tuple[str, ...], input_path: Path | None, warmup: int, runs: int | None, min_time: float,
          isolated: bool, save_path: Path | None, as_json: bool, texts: tuple[str, ...] = (),
          images: tuple[Path, ...] = (), on: str | None = None, fmt: str = "table", wide: bool = False) -> None:
    """Benchmark one or more artifacts with the same harness; one table row per artifact.

    (``edgekit bench --matrix SRC ...`` still runs ``edgekit matrix SRC ...`` for this release.)
    """
    from edgekit.harness import SCHEMA, benchmark
    from edgekit.host import host_info
    from edgekit.report import bench_table

    with errors(), remote(on) as place:
        sizes = parse_dims(dims)
        results = []
        host = host_info() if place is None else None  # a device's rows carry the device's block
        with progress_bar(not as_json) as progress:
            for i, path in enumerate(artifacts):
                if progress:
                    progress(f"bench {len(artifacts)} artifact(s)", i, len(artifacts))
                results.append(benchmark(path, device=device, runtime=runtime, threads=threads,
                                         inputs=input_path, batch=batch, dims=sizes, warmup=warmup,
                                         runs=runs, min_time=min_time, isolated=isolated,
                                         task_inputs=task_inputs(texts, images, path), on=place))
        if host is None:
            host = next((r.host for r in results if r.host), None)
        else:
            host = host_info(since=host)
        payload = {"schema": SCHEMA, "host": host, "results": [r.to_dict() for r in results]}
        if publish(payload, save_path, as_json):
            show(bench_table(results), fmt, wide)
            if any(r.stages for r in results):
                show(stages_table(results), fmt, wide)
        if any(r.status != "ok" for r in results):
            raise SystemExit(1)
