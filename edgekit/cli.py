"""The ``edgekit`` command line: convert, inspect, run, bench, devices.

Exit codes: 0 success; 1 a user-caused error (message and fix on stderr) or a failed benchmark
row; 2 bad usage or an unknown option value; 3 an fp32 artifact failed verification; 4 a recipe
stage lost more of the task metric than the recipe allows.
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
            key = task.split(" | ")[0]  # "distill | epoch 2/3 loss 0.41": one bar, a changing description
            if key not in tasks:
                tasks[key] = bar.add_task(task, total=total)
            bar.update(tasks[key], completed=done, total=total, description=task)

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


def _dims(values: tuple[str, ...]) -> dict[str, int]:
    """``--dim sequence=128`` -> ``{"sequence": 128}``."""
    try:
        return {k: int(v) for k, v in _parse_kv(values, "--dim").items()}
    except ValueError as e:
        raise ConfigError(f"--dim takes NAME=SIZE with a whole number: {e}",
                          fix="write e.g. --dim sequence=128") from e


def _publish(payload: Any, save_path: Path | None, as_json: bool) -> bool:
    """Write ``payload`` to ``--save`` and print it with ``--json``; True when a table is wanted."""
    if save_path:
        from edgekit.fsutil import write_json_atomic

        write_json_atomic(save_path, payload)
    if as_json:
        _emit_json(payload)
    return not as_json


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


def _stages_table(results: list[Any]) -> Any:
    """Per artifact, the p50 of each stage of a task benchmark (--text/--image)."""
    from rich.table import Table

    from edgekit.harness import STAGES

    t = Table(title="end to end, p50 ms per call (all inputs)", title_justify="left")
    for col in ("artifact", "task", "items", *STAGES, "total"):
        t.add_column(col, justify="left" if col in ("artifact", "task") else "right")
    for r in results:
        if r.stages and r.latency:
            t.add_row(r.artifact.rsplit("/", 1)[-1], r.task or "-", str(r.batch),
                      *(f"{r.stages[s].p50_ms:.3f}" for s in STAGES), f"{r.latency.p50_ms:.3f}")
    return t


def _run_task(m: Any, inputs: list[str], top_k: int, as_json: bool) -> None:
    """``edgekit run --text/--image``: the task's answer per input, as a table or JSON."""
    import time

    import numpy as np

    from edgekit.tasks import pipeline_for, task_of

    task = task_of(m)
    t = time.perf_counter()
    if task == "text-generation":  # served by the backend itself (llama.cpp)
        answers: list[Any] = [m.generate(text, max_tokens=64, temperature=0.0) for text in inputs]
    else:
        pipe = pipeline_for(m)
        answers = list(pipe(inputs, top_k=top_k) if "classify" in pipe.verbs else pipe(inputs))
    ms = (time.perf_counter() - t) * 1000
    if as_json:
        rows = [a.tolist() if isinstance(a, np.ndarray) else a for a in answers]
        _emit_json({"artifact": str(m.path), "task": task, "latency_ms": ms,
                    "results": [{"input": i, "output": r} for i, r in zip(inputs, rows)]})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{m.path.name}: {task}", title_justify="left")
    for col in ("input", "output"):
        table.add_column(col)
    for item, answer in zip(inputs, answers):
        if isinstance(answer, dict):
            shown = ", ".join(f"{escape(a['label'])} {a['score']:.3f}" for a in answer["top"])
        elif isinstance(answer, np.ndarray):
            shown = f"[{len(answer)}] " + np.array2string(answer[:6], precision=4) + (" ..." if len(answer) > 6 else "")
        else:
            shown = escape(str(answer))
        table.add_row(escape(item), shown)
    console.print(table)
    console.print(f"[dim]{ms:.2f} ms for {len(inputs)} input(s), preprocessing included[/]")


def _task_inputs(texts: tuple[str, ...], images: tuple[Path, ...], artifact: Path) -> list[str] | None:
    """``--text``/``--image`` values for a task pipeline: texts, or image paths (absolute, for a
    child process); checked against the input kind of the artifact's task."""
    if texts and images:
        raise click.UsageError("give --text or --image, not both: an artifact has one task")
    if not (texts or images):
        return None
    from edgekit.runtime import resolve_artifact
    from edgekit.tasks import check_input_kind, infer_task

    try:
        manifest = resolve_artifact(artifact).manifest
    except EdgekitError:
        manifest = None  # the benchmark reports an unreadable artifact as a failed row
    if manifest is not None:
        check_input_kind(artifact.name, manifest.task or infer_task(manifest.preprocess),
                         "image" if images else "text")
    return [str(p.expanduser().resolve()) for p in images] if images else list(texts)


def _recipe_table(report: dict[str, Any]) -> Any:
    """The stages a recipe ran, each with its metric, drop from the original and gate verdict."""
    from rich.table import Table

    from edgekit.optimize.pipeline import REPORT_COLUMNS, report_rows

    t = Table(title=f"recipe stages ({report.get('status', '-')}; drop from the original on "
              f"{report.get('data') or 'no evaluation data'})", title_justify="left")
    for col in REPORT_COLUMNS:
        t.add_column(col, justify="right" if col in ("drop", "allowed drop") else "left")
    for row in report_rows(report):
        t.add_row(*row[:-1], f"[{'red' if row[-1] == 'FAILED' else 'green'}]{row[-1]}[/]")
    return t


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
@click.option("--to", "targets", default=None,
              help=f"Target formats, comma separated: {', '.join(f.value for f in Format)}. "
              "Default: the recipe's targets, else onnx.")
@click.option("--precision", "precisions", default=None,
              help=f"Comma separated: {', '.join(p.value for p in Precision)}. "
              "Default: fp32, int8 (int8-dynamic without calibration data), int4.")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration data: .npz keyed by input "
              "name (samples on axis 0), or .txt/.jsonl text for a Hugging Face text model.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path),
              help="Labelled data for an accuracy check of every variant: .npz with the inputs and 'labels', "
              "or .jsonl with {\"text\": ..., \"label\": name or id} per line for a text model.")
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
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path),
              help="Recipe (YAML/JSON): prune -> distill -> quantize -> targets, with an accuracy gate after "
              "each stage (docs/recipes.md). --to/--precision override its targets/precisions.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def convert(source: str | None, targets: str | None, precisions: str | None, calib: Path | None,
            eval_data: Path | None, out: Path, name: str | None, weights: Path | None,
            example: Path | None, shapes: tuple[str, ...], seq_len: int | None,
            options: tuple[str, ...], keep_going: bool, recipe_path: Path | None, as_json: bool) -> None:
    """Convert SOURCE and verify every variant against the original.

    SOURCE is a Hugging Face model directory, a torch.export .pt2 file, package.module:factory
    (with --weights and --example/--shape), or builtin:digits-cnn (the default when omitted).
    """
    from edgekit.conversion import convert as run_convert
    from edgekit.errors import ConversionError, GateError, VerificationError

    with _errors():
        recipe = None
        if recipe_path is not None:
            from edgekit.optimize.recipe import load_recipe

            recipe = load_recipe(recipe_path)
        formats = Format.parse_list(targets or (list(recipe.targets) if recipe else "onnx"))
        if precisions is not None:
            Precision.parse_list(precisions)
        examples: Any = _shapes(shapes)
        if example is not None:
            from edgekit.io import read_npz

            examples = read_npz(example)
        if source is None:
            err.print("[dim]no SOURCE given: converting the built-in digits CNN (builtin:digits-cnn)[/]")
        report: dict[str, Any] | None = None
        with _progress(not as_json) as progress:
            try:
                kwargs = dict(targets=formats, precisions=precisions, out=out, calib=calib,
                              eval_data=eval_data, options=_options(options, formats), name=name,
                              weights=weights, seq_len=seq_len, keep_going=keep_going, progress=progress)
                if recipe is not None:
                    from edgekit.optimize.pipeline import run_recipe

                    result = run_recipe(recipe, source, examples, **kwargs)
                    arts, report = result.artifacts, result.report.to_dict()
                else:
                    arts = run_convert(source, examples, **kwargs)
                failure: EdgekitError | None = None
            except (VerificationError, ConversionError, GateError) as e:
                arts, failure = e.artifacts, e
                report = getattr(e, "report", None)
        if as_json:
            payload: dict[str, Any] = {"schema": "edgekit.convert/1", "artifacts": [a.to_dict() for a in arts]}
            if report is not None:
                payload["recipe"] = report
            _emit_json(payload)
        else:
            from edgekit.report import artifacts_table

            if arts or report is None:
                console.print(artifacts_table(arts))
            if report is not None:
                console.print(_recipe_table(report))
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
@click.option("--text", "texts", multiple=True, help="Run the artifact's task on this text (repeatable): labels "
              "for a classifier, a vector for an embedding model, a continuation for a GGUF LM.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="Classify this image file (repeatable), preprocessed as the manifest records.")
@click.option("--top-k", default=1, show_default=True, help="--text/--image: labels shown per input.")
def run(artifact: Path, input_path: Path | None, output_path: Path | None, device: str,
        runtime: str | None, threads: int | None, as_json: bool, texts: tuple[str, ...] = (),
        images: tuple[Path, ...] = (), top_k: int = 1) -> None:
    """Run ARTIFACT once on --input and print (or save) its outputs."""
    import time

    import numpy as np

    from edgekit.inputs import synthesize
    from edgekit.io import read_npz, write_npz
    from edgekit.runtime import load

    with _errors():
        with load(artifact, device=device, runtime=runtime, threads=threads) as m:
            if texts or images:
                _run_task(m, _task_inputs(texts, images, artifact) or [], top_k, as_json)
                return
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
@click.argument("artifacts", nargs=-1, required=False, type=click.Path(path_type=Path))
@click.option("--matrix", "matrix_src", metavar="SRC", help="Convert SRC (a convert SOURCE) to every format x "
              "precision that applies, evaluate and time each, and write OUT/matrix.json and matrix.png.")
@click.option("--to", "targets", help="--matrix: formats, comma separated (default: every installed one).")
@click.option("--precision", "precisions", help="--matrix: precisions, comma separated (default: each "
              "format's that apply).")
@click.option("--calib", type=click.Path(path_type=Path), help="--matrix: calibration data, as for convert.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path),
              help="--matrix: labelled data (.npz with 'labels', or .jsonl text+label) for the accuracy column.")
@click.option("--out", type=click.Path(path_type=Path), help="--matrix: output directory [default: edgekit-matrix].")
@click.option("--resume", is_flag=True, help="--matrix: keep the variants OUT/matrix.json already measured.")
@click.option("--plot/--no-plot", default=True, show_default=True, help="--matrix: write OUT/matrix.png.")
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
@click.option("--text", "texts", multiple=True, help="Measure the task end to end on this text (repeatable): "
              "tokenizing, inference and postprocessing timed apart.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="Measure the task end to end on this image file (repeatable), preprocessing timed apart.")
def bench(artifacts: tuple[Path, ...], device: str, runtime: str | None, threads: int | None, batch: int,
          dims: tuple[str, ...], input_path: Path | None, warmup: int, runs: int | None, min_time: float,
          isolated: bool, save_path: Path | None, as_json: bool, matrix_src: str | None = None,
          targets: str | None = None, precisions: str | None = None, calib: Path | None = None,
          eval_data: Path | None = None, out: Path | None = None, resume: bool = False,
          plot: bool = True, texts: tuple[str, ...] = (), images: tuple[Path, ...] = ()) -> None:
    """Benchmark one or more artifacts with the same harness; one table row per artifact.

    With --matrix SRC: convert SRC to every format x precision, evaluate and time each variant and
    a PyTorch eager baseline, one row per variant (failed ones with the reason).
    """
    if matrix_src is not None:
        if artifacts or texts or images:
            raise click.UsageError("--matrix takes the source as its value; give no ARTIFACTS, --text or "
                                   "--image with it")
        from edgekit._matrix_cli import run_matrix_command

        run_matrix_command(matrix_src, targets=targets, precisions=precisions, calib=calib, eval_data=eval_data,
                           out=out, resume=resume, plot=plot, input_path=input_path, save_path=save_path,
                           as_json=as_json, dims=dims, settings=dict(
                               device=device, runtime=runtime, threads=threads, batch=batch, warmup=warmup,
                               runs=runs, min_time=min_time, isolated=isolated))
        return
    matrix_only = [flag for flag, value in (("--to", targets), ("--precision", precisions), ("--calib", calib),
                                            ("--eval", eval_data), ("--out", out), ("--resume", resume or None))
                   if value is not None]
    if matrix_only:
        raise click.UsageError(f"{', '.join(matrix_only)} only apply with --matrix SRC")
    if not artifacts:
        raise click.UsageError("give one or more ARTIFACTS to benchmark, or --matrix SRC")
    from edgekit.harness import SCHEMA, benchmark
    from edgekit.report import bench_table

    with _errors():
        sizes = _dims(dims)
        results = []
        with _progress(not as_json) as progress:
            for i, path in enumerate(artifacts):
                if progress:
                    progress(f"bench {len(artifacts)} artifact(s)", i, len(artifacts))
                results.append(benchmark(path, device=device, runtime=runtime, threads=threads,
                                         inputs=input_path, batch=batch, dims=sizes, warmup=warmup,
                                         runs=runs, min_time=min_time, isolated=isolated,
                                         task_inputs=_task_inputs(texts, images, path)))
        payload = {"schema": SCHEMA, "results": [r.to_dict() for r in results]}
        if _publish(payload, save_path, as_json):
            console.print(bench_table(results))
            if any(r.stages for r in results):
                console.print(_stages_table(results))
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


@main.command()
@click.argument("source", required=False)
@click.option("--mode", type=click.Choice(["quantize", "prune"]), default="quantize", show_default=True,
              help="Perturb each layer alone: int8 fake-quantization, or a magnitude prune of its outputs.")
@click.option("--calib", type=click.Path(path_type=Path), help="Inputs the outputs are compared on "
              "(.npz keyed by input name, or text for a Hugging Face text model).")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path),
              help="Evaluation data: score by the task metric's drop instead of output error.")
@click.option("--metric", help="Metric on --eval data: accuracy, perplexity, cosine or package.module:function.")
@click.option("--amount", default=0.5, show_default=True, help="prune: share of each layer's output units zeroed.")
@click.option("--bits", default=8, show_default=True, help="quantize: weight bits.")
@click.option("--top", default=3, show_default=True, help="Layers put in the exclusion options.")
@click.option("--threshold", type=float, help="Exclude every layer scoring at least this (instead of --top).")
@click.option("--to", "targets", default="onnx,openvino,tflite,gguf", show_default=True,
              help="Formats to print exclusion options for.")
@click.option("--native", is_flag=True, help="Resolve each backend's own names (exports once per format).")
@click.option("--weights", type=click.Path(path_type=Path), help="Weights for a package.module:factory source.")
@click.option("--example", type=click.Path(path_type=Path), help="Example inputs (.npz) for a factory source.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=1x3x224x224[:dtype]",
              help="Example input shape for a factory source (repeatable).")
@click.option("--seq-len", type=int, help="Token length for text data (default 128).")
@click.option("--json", "as_json", is_flag=True, help="Print the report and the options as JSON.")
def sensitivity(source: str | None, mode: str, calib: Path | None, eval_data: Path | None, metric: str | None,
                amount: float, bits: int, top: int, threshold: float | None, targets: str, native: bool,
                weights: Path | None, example: Path | None, shapes: tuple[str, ...], seq_len: int | None,
                as_json: bool) -> None:
    """Rank SOURCE's layers by what quantizing (or pruning) each one alone costs, and print the
    options that keep the worst in float for every format (-O exclude_layers=...)."""
    from edgekit.optimize.sensitivity import sensitivity as run_sensitivity

    with _errors():
        formats = Format.parse_list(targets)
        examples: Any = _shapes(shapes)
        if example is not None:
            from edgekit.io import read_npz

            examples = read_npz(example)
        with _progress(not as_json) as progress:
            report = run_sensitivity(source, examples, mode=mode, data=calib, eval=eval_data, metric=metric,
                                     amount=amount, bits=bits, weights=weights, seq_len=seq_len,
                                     progress=progress)
        pick = {"threshold": threshold} if threshold is not None else {"top": top}
        options: dict[str, Any] = {}
        for fmt in formats:
            try:
                options[fmt.value] = report.exclusions(fmt.value, native=native, **pick)
            except EdgekitError as e:  # e.g. GGUF for a model that is not a causal LM
                options[fmt.value] = {"error": e.problem}
        if as_json:
            _emit_json({**report.to_dict(), "exclusions": options})
            return
        console.print(report)
        chosen = report.select(**pick)
        if chosen:
            console.print(f"keep in float: [bold]-O exclude_layers={','.join(chosen)}[/]", highlight=False)
        for fmt, opts in options.items():
            console.print(f"  {fmt}: {json.dumps(opts)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
