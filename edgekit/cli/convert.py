"""``edgekit convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.cli._common import (
    converter_options,
    emit_json,
    errors,
    fail,
    note,
    parse_shapes,
    progress_bar,
    show,
    table_options,
)
from edgekit.errors import EdgekitError
from edgekit.types import Format, Precision


def recipe_table(report: dict[str, Any]) -> Any:
    """The stages a recipe ran, each with its metric, drop from the original and gate verdict."""
    from edgekit.optimize.pipeline import REPORT_COLUMNS, report_rows
    from edgekit.report import Column, Sheet

    t = Sheet(f"recipe stages ({report.get('status', '-')}; drop from the original on "
              f"{report.get('data') or 'no evaluation data'})",
              [Column(c, "right" if c in ("drop", "allowed drop") else "left") for c in REPORT_COLUMNS])
    for row in report_rows(report):
        t.add(*row)
    return t


def next_steps(arts: list[Any], out: Path) -> list[str]:
    """Where the artifacts went and the commands to try on them."""
    import shlex

    ok = [a.path for a in arts if a.status in ("ok", "degraded")]
    if not ok:
        return []
    shown = " ".join(shlex.quote(str(p)) for p in ok) if len(ok) <= 4 else \
        " ".join(sorted({shlex.quote(str(out)) + "/*" + p.suffix for p in ok}))
    return [f"wrote {len(ok)} artifact(s), each with a .edgekit.json manifest, to {out}/",
            f"next: edgekit bench {shown}",
            f"      edgekit inspect {shlex.quote(str(ok[-1]))}   (edgekit run ... --input x.npz to run one)"]


@click.command()
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
@click.option("--max-accuracy-drop", type=float, default=None,
              help="With --eval: the largest task-metric drop static int8 may have (0.01 = one accuracy point); "
              "layers are kept in float until it fits. Default without it: top-1 agreement >= 0.98 "
              "(-O int8_target=...).")
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
@table_options
def convert(source: str | None, targets: str | None, precisions: str | None, calib: Path | None,
            eval_data: Path | None, max_accuracy_drop: float | None, out: Path, name: str | None, weights: Path | None,
            example: Path | None, shapes: tuple[str, ...], seq_len: int | None,
            options: tuple[str, ...], keep_going: bool, recipe_path: Path | None, as_json: bool,
            fmt: str = "table", wide: bool = False) -> None:
    """Convert SOURCE and verify every variant against the original.

    SOURCE is a Hugging Face model directory, a torch.export .pt2 file, package.module:factory
    (with --weights and --example/--shape), or builtin:digits-cnn (the default when omitted).
    """
    from edgekit.conversion import convert as run_convert
    from edgekit.errors import ConversionError, GateError, VerificationError

    with errors():
        recipe = None
        if recipe_path is not None:
            from edgekit.optimize.recipe import load_recipe

            recipe = load_recipe(recipe_path)
        formats = Format.parse_list(targets or (list(recipe.targets) if recipe else "onnx"))
        if max_accuracy_drop is not None:
            if eval_data is None:
                raise click.UsageError("--max-accuracy-drop needs --eval (labelled data to measure the drop on)")
            from edgekit.converters import CONVERTERS

            options = (*options, *(f"{f.value}.max_accuracy_drop={max_accuracy_drop}" for f in formats
                                   if hasattr(CONVERTERS.get(f).Options, "max_accuracy_drop")))
        if precisions is not None:
            Precision.parse_list(precisions)
        examples: Any = parse_shapes(shapes)
        if example is not None:
            from edgekit.io import read_npz

            examples = read_npz(example)
        if source is None:
            note("no SOURCE given: converting the built-in digits CNN (builtin:digits-cnn)")
        report: dict[str, Any] | None = None
        with progress_bar(not as_json) as progress:
            try:
                kwargs = dict(targets=formats, precisions=precisions, out=out, calib=calib,
                              eval_data=eval_data, options=converter_options(options, formats), name=name,
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
            emit_json(payload)
        else:
            from edgekit.report import artifacts_table

            if arts or report is None:
                show(artifacts_table(arts), fmt, wide)
            if report is not None:
                show(recipe_table(report), fmt, wide)
            for line in next_steps(arts, out):
                note(line)
        for a in arts:
            if a.status == "degraded":  # usable, so exit 0, but never silently
                note(f"warning: {a.path.name} is degraded: {a.reason}", style="yellow")
            elif a.status == "skipped":
                note(f"skipped {a.path.name}: {a.reason}", style="yellow")
        if failure is not None:
            fail(failure)
        if any(a.status not in ("ok", "degraded", "skipped") for a in arts):
            raise SystemExit(1)
