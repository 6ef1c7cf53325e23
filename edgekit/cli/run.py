"""``edgekit run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from edgekit.cli._common import console, emit_json, errors, note, task_inputs
from edgekit.cli.devices import on_option, run_on


def run_task(m: Any, inputs: list[str], top_k: int, as_json: bool) -> None:
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
        emit_json({"artifact": str(m.path), "task": task, "latency_ms": ms,
                    "results": [{"input": i, "output": r} for i, r in zip(inputs, rows)]})
        return
    from rich.table import Table

    table = Table(title=f"{m.path.name}: {task}", title_justify="left")
    for col in ("input", "output"):
        table.add_column(col)
    for item, answer in zip(inputs, answers):
        if isinstance(answer, dict):
            shown = ", ".join(f"{escape(a['label'])} {a['score']:.3f}" for a in answer["top"])
        elif isinstance(answer, np.ndarray):
            shown = escape(f"[{len(answer)}] " + np.array2string(answer[:6], precision=4)
                           + (" ..." if len(answer) > 6 else ""))
        else:
            shown = escape(str(answer))
        table.add_row(escape(item), shown)
    console.print(table)
    console.print(f"[dim]{ms:.2f} ms for {len(inputs)} input(s), preprocessing included[/]")


@click.command()
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
@on_option
def run(artifact: Path, input_path: Path | None, output_path: Path | None, device: str,
        runtime: str | None, threads: int | None, as_json: bool, texts: tuple[str, ...] = (),
        images: tuple[Path, ...] = (), top_k: int = 1, on: str | None = None) -> None:
    """Run ARTIFACT once on --input and print (or save) its outputs (with --on: on a device, compared with here)."""
    if on is not None:
        return run_on(on, artifact, input_path, output_path, runtime, threads, as_json)
    import time

    import numpy as np

    from edgekit.inputs import synthesize
    from edgekit.io import read_npz, write_npz
    from edgekit.runtime import load

    with errors():
        with load(artifact, device=device, runtime=runtime, threads=threads) as m:
            if texts or images:
                run_task(m, task_inputs(texts, images, artifact) or [], top_k, as_json)
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
            if not isinstance(value, np.ndarray):  # an ONNX sequence or map output: a list or dict
                summary[name] = {"type": type(value).__name__, "length": len(value),
                                 "values": value[:16] if isinstance(value, list) else value}
                continue
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
            emit_json({"artifact": str(artifact), "latency_ms": ms, "synthesized_inputs": input_path is None,
                        "outputs": summary})
            return
        if input_path is None:
            note("no --input: ran on inputs synthesized from the signature")
        for name, entry in summary.items():
            if "type" in entry:
                console.print(f"[bold]{escape(name)}[/] " + escape(f"{entry['type']} of {entry['length']}: "
                                                                  f"{entry['values']}"), highlight=False)
                continue
            console.print(f"[bold]{escape(name)}[/] {entry['dtype']}{entry['shape']}", highlight=False)
            if "labels" in entry or "argmax" in entry:
                console.print(escape(f"  argmax: {entry.get('labels', entry.get('argmax'))}"), highlight=False)
            if "values" in entry:
                console.print(f"  {np.array2string(np.asarray(entry['values']), precision=4, threshold=64)}",
                              markup=False)
        console.print(f"[dim]{ms:.2f} ms (one call, including input checks)[/]")
        if output_path:
            console.print(escape(f"saved outputs to {output_path}"), highlight=False)
