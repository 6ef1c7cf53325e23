"""The ``edgekit`` command line: convert, inspect, run, bench, devices.

Exit codes: 0 success; 1 a user-caused error (message and fix on stderr) or a failed benchmark
row; 2 bad usage or an unknown option value; 3 an fp32 artifact failed verification.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from edgekit.errors import ConfigError, EdgekitError
from edgekit.types import Device, Format, Precision


def _console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=180)  # pipes and CI logs: wide tables


console = _console()
err = _console(stderr=True)


def _fail(e: EdgekitError) -> None:
    err.print(f"[bold red]error:[/] {e.problem}", highlight=False)
    if e.fix:
        err.print(f"  [bold]fix:[/] {e.fix}", highlight=False)
    raise SystemExit(e.exit_code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except EdgekitError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: nothing half-written was left in the output directory")
        raise SystemExit(130) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int | None], None] | None]:
    """A rich progress display on stderr; the library reports (task, done, total)."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    tasks: dict[str, Any] = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        def update(task: str, done: int, total: int | None) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)

        yield update


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _parse_kv(values: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE", fix=f"write e.g. {what} name=value")
        pairs[key.strip()] = value.strip()
    return pairs


def _options(values: tuple[str, ...], formats: list[Format]) -> dict[str, dict[str, str]]:
    """``-O int4_block_size=64`` applies to every target; ``-O onnx.opset=18`` to one."""
    opts: dict[str, dict[str, str]] = {f.value: {} for f in formats}
    for key, value in _parse_kv(values, "-O").items():
        fmt, dot, name = key.partition(".")
        if dot and fmt in opts:
            opts[fmt][name] = value
        elif dot:
            raise ConfigError(f"-O {key}: {fmt!r} is not one of the targets",
                              fix=f"targets: {', '.join(opts)}")
        else:
            for d in opts.values():
                d[key] = value
    return opts


def _shapes(values: tuple[str, ...]) -> dict[str, Any] | None:
    """``--shape pixels=1x3x32x32[:float32]`` -> zero-filled example arrays."""
    if not values:
        return None
    import numpy as np

    examples = {}
    for name, spec in _parse_kv(values, "--shape").items():
        dims, _, dtype = spec.partition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
            examples[name] = np.zeros(shape, dtype=dtype or "float32")
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--shape {name}={spec} is not SIZExSIZE[:dtype]",
                              fix="write e.g. --shape pixels=1x3x224x224:float32") from e
    return examples


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgekit")
def main() -> None:
    """edgekit: convert PyTorch models to edge formats, verify, run and benchmark them.

    \b
    edgekit convert                               # built-in digits CNN -> ONNX fp32/int8/int4
    edgekit convert my_hf_dir --to onnx --precision fp32,int8,int4 --calib calib.npz --out out/
    edgekit inspect out/my_hf_dir-int8.onnx
    edgekit run out/my_hf_dir-int8.onnx --input sample.npz
    edgekit bench out/*.onnx
    edgekit devices
    """


@main.command()
@click.argument("source", required=False)
@click.option("--to", "targets", default="onnx", show_default=True,
              help=f"Target formats, comma separated: {', '.join(f.value for f in Format)}.")
@click.option("--precision", "precisions", default=None,
              help=f"Comma separated: {', '.join(p.value for p in Precision)}. "
              "Default: fp32, int8 (int8-dynamic without calibration data), int4.")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration data: .npz keyed by input "
              "name (samples on axis 0), or .txt/.jsonl text for a Hugging Face text model.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path),
              help="Labelled data (.npz with the inputs and 'labels') for an accuracy check of every variant.")
@click.option("--out", default="edgekit-out", show_default=True, type=click.Path(path_type=Path),
              help="Output directory; each artifact gets a <file>.edgekit.json manifest beside it.")
@click.option("--name", help="Base name of the output files (default: the source's name).")
@click.option("--weights", type=click.Path(path_type=Path),
              help="Weights for a package.module:factory source (.safetensors or a state dict).")
@click.option("--example", type=click.Path(path_type=Path),
              help="Example inputs (.npz) for a factory source.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=1x3x224x224[:dtype]",
              help="Example input shape for a factory source (repeatable).")
@click.option("--seq-len", type=int, help="Token length for text calibration data (default 128).")
@click.option("-O", "--option", "options", multiple=True, metavar="[FORMAT.]KEY=VALUE",
              help="Converter option, e.g. -O int4_block_size=64 -O onnx.calibration=entropy.")
@click.option("--keep-going", is_flag=True, help="Keep converting other variants when one fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def convert(source: str | None, targets: str, precisions: str | None, calib: Path | None,
            eval_data: Path | None, out: Path, name: str | None, weights: Path | None,
            example: Path | None, shapes: tuple[str, ...], seq_len: int | None,
            options: tuple[str, ...], keep_going: bool, as_json: bool) -> None:
    """Convert SOURCE and verify every variant against the original.

    SOURCE is a Hugging Face model directory, a torch.export .pt2 file, package.module:factory
    (with --weights and --example/--shape), or builtin:digits-cnn (the default when omitted).
    """
    from edgekit.conversion import convert as run_convert
    from edgekit.errors import ConversionError, VerificationError

    with _errors():
        formats = Format.parse_list(targets)
        if precisions is not None:
            Precision.parse_list(precisions)
        examples: Any = _shapes(shapes)
        if example is not None:
            from edgekit.io import read_npz

            examples = read_npz(example)
        if source is None:
            err.print("[dim]no SOURCE given: converting the built-in digits CNN (builtin:digits-cnn)[/]")
        with _progress(not as_json) as progress:
            try:
                arts = run_convert(source, examples, targets=formats, precisions=precisions, out=out,
                                   calib=calib, eval_data=eval_data, options=_options(options, formats),
                                   name=name, weights=weights, seq_len=seq_len, keep_going=keep_going,
                                   progress=progress)
                failure: EdgekitError | None = None
            except (VerificationError, ConversionError) as e:
                arts, failure = e.artifacts, e
        if as_json:
            _emit_json({"schema": "edgekit.convert/1", "artifacts": [a.to_dict() for a in arts]})
        else:
            from edgekit.report import artifacts_table

            console.print(artifacts_table(arts))
        if failure is not None:
            _fail(failure)
        if any(a.status != "ok" for a in arts):
            raise SystemExit(1)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (or signature) as JSON.")
def inspect(artifact: Path, as_json: bool) -> None:
    """Show an artifact's manifest: format, precision, signature, source, verification."""
    from edgekit.report import manifest_table, signature_table
    from edgekit.runtime import load, resolve_artifact

    with _errors():
        ref = resolve_artifact(artifact)
        if ref.manifest is None:  # a bare model: ask the runtime for its signature
            with load(ref.path) as m:
                sig = m.signature
            if as_json:
                _emit_json({"artifact": ref.path.name, "format": ref.format.value, "manifest": None,
                            "signature": sig.to_dict()})
            else:
                console.print(f"{ref.path.name}: {ref.format.value}, no edgekit manifest")
                console.print(signature_table(sig))
            return
        if as_json:
            _emit_json(ref.manifest.to_dict())
        else:
            console.print(manifest_table(ref.manifest))
            console.print(signature_table(ref.manifest.signature))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="Inputs as .npz keyed by input name (default: synthesized from the signature).")
@click.option("--output", "output_path", type=click.Path(path_type=Path), help="Save outputs to this .npz.")
@click.option("--device", default="cpu", show_default=True, help="cpu, gpu, npu, auto, or runtime:BACKEND.")
@click.option("--runtime", help="Force a runtime (default: the first installed one for the format).")
@click.option("--threads", type=int, help="Intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print outputs (shape, dtype, values) as JSON.")
def run(artifact: Path, input_path: Path | None, output_path: Path | None, device: str,
        runtime: str | None, threads: int | None, as_json: bool) -> None:
    """Run ARTIFACT once on --input and print (or save) its outputs."""
    import time

    import numpy as np

    from edgekit.inputs import synthesize
    from edgekit.io import read_npz, write_npz
    from edgekit.runtime import load

    with _errors():
        with load(artifact, device=device, runtime=runtime, threads=threads) as m:
            feed = read_npz(input_path) if input_path else synthesize(m.signature)
            t = time.perf_counter()
            result = m.run(feed)
            ms = (time.perf_counter() - t) * 1000
            labels = (m.manifest.preprocess.get("id2label") if m.manifest else None) or {}
        if output_path:
            write_npz(output_path, result)
        summary = {}
        for name, value in result.items():
            entry: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype)}
            if value.size <= 64:
                entry["values"] = value.tolist()
            if value.ndim >= 1 and value.dtype.kind == "f" and value.shape[-1] > 1:
                top = np.asarray(value).reshape(-1, value.shape[-1]).argmax(-1)[:16].tolist()
                entry["argmax"] = top
                if labels:
                    entry["labels"] = [labels.get(str(i), str(i)) for i in top]
            summary[name] = entry
        if as_json:
            _emit_json({"artifact": str(artifact), "latency_ms": ms, "synthesized_inputs": input_path is None,
                        "outputs": summary})
            return
        if input_path is None:
            err.print("[dim]no --input: ran on inputs synthesized from the signature[/]")
        for name, entry in summary.items():
            console.print(f"[bold]{name}[/] {entry['dtype']}{entry['shape']}")
            if "labels" in entry or "argmax" in entry:
                console.print(f"  argmax: {entry.get('labels', entry.get('argmax'))}")
            if "values" in entry:
                console.print(f"  {np.array2string(np.asarray(entry['values']), precision=4, threshold=64)}")
        console.print(f"[dim]{ms:.2f} ms (one call, including input checks)[/]")
        if output_path:
            console.print(f"saved outputs to {output_path}")


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True, help="cpu, gpu, npu, auto, or runtime:BACKEND.")
@click.option("--runtime", help="Force a runtime (default: the first installed one for the format).")
@click.option("--threads", type=int, help="Intra-op threads (default: the runtime's choice).")
@click.option("--batch", default=1, show_default=True, help="Batch size of synthesized inputs.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
              help="Size of a named dynamic axis, e.g. --dim sequence=128 (default: the example's).")
@click.option("--input", "input_path", type=click.Path(path_type=Path), help="Inputs (.npz) instead of synthesized ones.")
@click.option("--warmup", default=10, show_default=True, help="Untimed calls before measuring.")
@click.option("--runs", type=int, help="Timed calls (default: as many as fit in --min-time, at least 10).")
@click.option("--min-time", default=2.0, show_default=True, help="Seconds of timed calls when --runs is not given.")
@click.option("--isolated/--in-process", default=True, show_default=True,
              help="Measure each artifact in a fresh process (real cold start; a crash is a failed row).")
@click.option("--save", "save_path", type=click.Path(path_type=Path), help="Also write the JSON results here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def bench(artifacts: tuple[Path, ...], device: str, runtime: str | None, threads: int | None, batch: int,
          dims: tuple[str, ...], input_path: Path | None, warmup: int, runs: int | None, min_time: float,
          isolated: bool, save_path: Path | None, as_json: bool) -> None:
    """Benchmark one or more artifacts with the same harness; one table row per artifact."""
    from edgekit.fsutil import write_json_atomic
    from edgekit.harness import SCHEMA, benchmark
    from edgekit.report import bench_table

    with _errors():
        sizes = {k: int(v) for k, v in _parse_kv(dims, "--dim").items()}
        results = []
        with _progress(not as_json) as progress:
            for i, path in enumerate(artifacts):
                if progress:
                    progress(f"bench {len(artifacts)} artifact(s)", i, len(artifacts))
                results.append(benchmark(path, device=device, runtime=runtime, threads=threads,
                                         inputs=input_path, batch=batch, dims=sizes, warmup=warmup,
                                         runs=runs, min_time=min_time, isolated=isolated))
        payload = {"schema": SCHEMA, "results": [r.to_dict() for r in results]}
        if save_path:
            write_json_atomic(save_path, payload)
        if as_json:
            _emit_json(payload)
        else:
            console.print(bench_table(results))
        if any(r.status != "ok" for r in results):
            raise SystemExit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def devices(as_json: bool) -> None:
    """List each registered runtime, whether it is installed, and the devices it can use here."""
    from rich.table import Table

    from edgekit.deps import available
    from edgekit.runtimes import RUNTIMES

    rows = []
    with _errors():
        for name, cls in RUNTIMES.items():
            installed = available(cls.module)
            devs = {d.value: names for d, names in cls.devices().items()} if installed else {}
            rows.append({"runtime": name, "installed": installed, "version": cls.version() if installed else None,
                         "formats": [f.value for f in cls.formats], "devices": devs,
                         "install": None if installed else f"pip install 'edgekit[{cls.extra}]'"})
    if as_json:
        _emit_json({"schema": "edgekit.devices/1", "runtimes": rows})
        return
    t = Table(title="runtimes and devices on this machine", title_justify="left")
    for col in ("runtime", "version", "formats", "devices (backends)"):
        t.add_column(col)
    for r in rows:
        devs = "; ".join(f"[bold]{d}[/] ({', '.join(n)})" for d, n in r["devices"].items() if d != Device.AUTO.value)
        t.add_row(r["runtime"], r["version"] or "[red]not installed[/]", ", ".join(r["formats"]),
                  devs or f"[dim]{r['install']}[/]")
    console.print(t)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
