"""``edgekit sensitivity``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from edgekit.cli._common import console, emit_json, errors, parse_shapes, progress_bar, show
from edgekit.errors import EdgekitError
from edgekit.types import Format


@click.command()
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

    with errors():
        formats = Format.parse_list(targets)
        examples: Any = parse_shapes(shapes)
        if example is not None:
            from edgekit.io import read_npz

            examples = read_npz(example)
        with progress_bar(not as_json) as progress:
            report = run_sensitivity(source, examples, mode=mode, data=calib, eval=eval_data, metric=metric,
                                     amount=amount, bits=bits, weights=weights, seq_len=seq_len,
                                     progress=progress)
        # --top recommends: only layers that stand out from the noise floor; --threshold is the user's cut
        pick: dict[str, Any] = {"threshold": threshold} if threshold is not None else {"top": top, "above_noise": True}
        options: dict[str, Any] = {}
        for fmt in formats:
            try:
                options[fmt.value] = report.exclusions(fmt.value, native=native, **pick)
            except EdgekitError as e:  # e.g. GGUF for a model that is not a causal LM
                options[fmt.value] = {"error": e.problem}
        if as_json:
            emit_json({**report.to_dict(), "exclusions": options})
            return
        show(report)
        chosen = report.select(**pick)
        if chosen:
            console.print(f"keep in float: [bold]-O exclude_layers={escape(','.join(chosen))}[/]", highlight=False)
        elif threshold is None and report.rows:
            console.print(f"no layer stands out from the noise floor (top score {report.rows[0].score:.3g}, "
                          f"floor {report.noise_floor:.3g}): quantize every layer; --threshold SCORE picks "
                          "layers anyway", highlight=False)
        for fmt, opts in options.items():
            console.print(escape(f"  {fmt}: {json.dumps(opts)}"), highlight=False, soft_wrap=True)
