"""``edgekit inspect``."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli._common import console, emit_json, errors, show


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (or signature) as JSON.")
def inspect(artifact: Path, as_json: bool) -> None:
    """Show an artifact's manifest: format, precision, signature, source, verification."""
    from edgekit.report import manifest_table, signature_table
    from edgekit.runtime import load, resolve_artifact

    with errors():
        ref = resolve_artifact(artifact)
        if ref.manifest is None:  # a bare model: ask the runtime for its signature
            with load(ref.path) as m:
                sig = m.signature
            if as_json:
                emit_json({"artifact": ref.path.name, "format": ref.format.value, "manifest": None,
                            "signature": sig.to_dict()})
            else:
                console.print(f"{ref.path.name}: {ref.format.value}, no edgekit manifest", markup=False)
                show(signature_table(sig))
            return
        if as_json:
            emit_json(ref.manifest.to_dict())
        else:
            show(manifest_table(ref.manifest))
            show(signature_table(ref.manifest.signature))
