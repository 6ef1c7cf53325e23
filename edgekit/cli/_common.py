"""What every ``edgekit`` command shares: consoles, error rendering, progress, JSON and option parsing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from edgekit.errors import ConfigError, EdgekitError
from edgekit.types import Format


def make_console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=180)  # pipes and CI logs: wide tables


console = make_console()
err = make_console(stderr=True)


class Output:
    """The group's -q/-v: quiet prints results only (no progress, notes or hints); verbose lets
    third-party output through (``EDGEKIT_VERBOSE=1``, read by :func:`edgekit.quiet.quiet`)."""

    quiet = False
    verbose = False


def note(message: str, style: str = "dim") -> None:
    """A line for people on stderr (what happened, what to try next); silent with -q."""
    if not Output.quiet:
        err.print(Text(message, style=style), soft_wrap=True)  # whole lines: commands stay copyable


def show(obj: Any, fmt: str = "table", wide: bool = False) -> None:
    """Print a report Sheet or rich table on stdout: fitted in a terminal, plain text in a pipe,
    or ``--format md|csv``."""
    from edgekit.cli.table import show as render

    render(obj, console, fmt, wide)


def fail(e: EdgekitError) -> None:
    # Text, not markup: "pip install 'edgekit[convert]'" and "[N, 3, 224, 224]" print as written
    err.print(Text.assemble(("error:", "bold red"), " ", e.problem), highlight=False, soft_wrap=True)
    if e.fix:
        err.print(Text.assemble("  ", ("fix:", "bold"), " ", e.fix), highlight=False, soft_wrap=True)
    raise SystemExit(e.exit_code)


@contextmanager
def errors() -> Iterator[None]:
    try:
        yield
    except EdgekitError as e:
        fail(e)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: nothing half-written was left in the output directory")
        raise SystemExit(130) from None


def show_warnings() -> None:
    """Print the library's :class:`EdgekitWarning` as ``warning: ...`` on stderr (a capped thread
    count, removed staging leftovers); other warnings as Python shows them."""
    import warnings

    from rich.markup import escape

    from edgekit.errors import EdgekitWarning

    original = warnings.showwarning
    if getattr(original, "edgekit", False):
        return

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, EdgekitWarning):
            err.print(f"[bold yellow]warning:[/] {escape(str(message))}", highlight=False)
        else:
            original(message, category, *args, **kwargs)

    show.edgekit = True  # type: ignore[attr-defined]
    warnings.showwarning = show


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int | None], None] | None]:
    """A rich progress display on stderr; the library reports (task, done, total)."""
    if not enabled or Output.quiet:
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
                tasks[key] = bar.add_task(escape(task), total=total)
            bar.update(tasks[key], completed=done, total=total, description=escape(task))

        yield update


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def parse_kv(values: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE", fix=f"write e.g. {what} name=value")
        pairs[key.strip()] = value.strip()
    return pairs


def converter_options(values: tuple[str, ...], formats: list[Format]) -> dict[str, dict[str, str]]:
    """``-O int4_block_size=64`` applies to every target; ``-O onnx.opset=18`` to one."""
    opts: dict[str, dict[str, str]] = {f.value: {} for f in formats}
    for key, value in parse_kv(values, "-O").items():
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


def parse_dims(values: tuple[str, ...]) -> dict[str, int]:
    """``--dim sequence=128`` -> ``{"sequence": 128}``."""
    try:
        return {k: int(v) for k, v in parse_kv(values, "--dim").items()}
    except ValueError as e:
        raise ConfigError(f"--dim takes NAME=SIZE with a whole number: {e}",
                          fix="write e.g. --dim sequence=128") from e


def publish(payload: Any, save_path: Path | None, as_json: bool) -> bool:
    """Write ``payload`` to ``--save`` and print it with ``--json``; True when a table is wanted."""
    if save_path:
        from edgekit.fsutil import write_json_atomic

        write_json_atomic(save_path, payload)
    if as_json:
        emit_json(payload)
    return not as_json


def parse_shapes(values: tuple[str, ...]) -> dict[str, Any] | None:
    """``--shape pixels=1x3x32x32[:float32]`` -> zero-filled example arrays."""
    if not values:
        return None
    import numpy as np

    examples = {}
    for name, spec in parse_kv(values, "--shape").items():
        dims, _, dtype = spec.partition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
            examples[name] = np.zeros(shape, dtype=dtype or "float32")
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--shape {name}={spec} is not SIZExSIZE[:dtype]",
                              fix="write e.g. --shape pixels=1x3x224x224:float32") from e
    return examples



def task_inputs(texts: tuple[str, ...], images: tuple[Path, ...], artifact: Path) -> list[str] | None:
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


def table_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--format table|md|csv`` and ``--wide`` for a command that prints a results table."""
    fn = click.option("--wide", is_flag=True, help="Every column, however wide the terminal.")(fn)
    return click.option("--format", "fmt", type=click.Choice(["table", "md", "csv"]), default="table",
                        show_default=True, help="table: fitted to the terminal (plain text when piped); "
                        "md: a Markdown table; csv: comma separated.")(fn)


def checked(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: a timing value the harness cannot use is ``error: --runs must be ...`` (exit 2)
    before anything runs; ``--threads`` above the CPU count is capped with a warning."""
    from edgekit import values

    flag = "--" + str(param.name).replace("_", "-")
    try:
        if value is None:
            return value
        if param.name == "threads":
            return values.threads_value(value, flag=flag)
        if param.name == "min_time":
            values.timing_values(warmup=0, runs=None, min_time=value, batch=1, cli=True)
            return value
        return values.whole(str(param.name), value, minimum=0 if param.name == "warmup" else 1, flag=flag)
    except EdgekitError as e:
        fail(e)


def timing_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The harness options shared by ``bench`` and ``matrix``: device, threads, inputs, timing, output."""
    options = [
        click.option("--device", default="cpu", show_default=True, help="cpu, gpu, npu, auto, or runtime:BACKEND."),
        click.option("--runtime", help="Force a runtime (default: the first installed one for the format)."),
        click.option("--threads", type=int, callback=checked, help="Intra-op threads (default: the runtime's "
                     "choice; capped at the CPUs this process may use)."),
        click.option("--batch", default=1, show_default=True, callback=checked,
                     help="Batch size of synthesized inputs."),
        click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
                     help="Size of a named dynamic axis, e.g. --dim sequence=128 (default: the example's)."),
        click.option("--input", "input_path", type=click.Path(path_type=Path),
                     help="Inputs (.npz) instead of synthesized ones."),
        click.option("--warmup", default=10, show_default=True, callback=checked,
                     help="Untimed calls before measuring."),
        click.option("--runs", type=int, callback=checked,
                     help="Timed calls (default: as many as fit in --min-time, at least 10)."),
        click.option("--min-time", default=2.0, show_default=True, callback=checked,
                     help="Seconds of timed calls when --runs is not given."),
        click.option("--isolated/--in-process", default=True, show_default=True,
                     help="Measure each artifact in a fresh process (real cold start; a crash is a failed row)."),
        click.option("--save", "save_path", type=click.Path(path_type=Path),
                     help="Also write the JSON results here."),
        click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
