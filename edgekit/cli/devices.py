"""``edgekit devices``."""

from __future__ import annotations

import click

from edgekit.cli._common import console, emit_json, errors
from edgekit.types import Device


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def devices(as_json: bool) -> None:
    """List each registered runtime, whether it is installed, and the devices it can use here."""
    from rich.table import Table

    from edgekit.deps import available
    from edgekit.runtimes import RUNTIMES

    rows = []
    with errors():
        for name, cls in RUNTIMES.items():
            installed = available(cls.module)
            devs = {d.value: names for d, names in cls.devices().items()} if installed else {}
            rows.append({"runtime": name, "installed": installed, "version": cls.version() if installed else None,
                         "formats": [f.value for f in cls.formats], "devices": devs,
                         "install": None if installed else f"pip install 'edgekit[{cls.extra}]'"})
    if as_json:
        emit_json({"schema": "edgekit.devices/1", "runtimes": rows})
        return
    t = Table(title="runtimes and devices on this machine", title_justify="left")
    for col in ("runtime", "version", "formats", "devices (backends)"):
        t.add_column(col)
    for r in rows:
        devs = "; ".join(f"[bold]{d}[/] ({', '.join(n)})" for d, n in r["devices"].items() if d != Device.AUTO.value)
        t.add_row(r["runtime"], r["version"] or "[red]not installed[/]", ", ".join(r["formats"]),
                  devs or f"[dim]{r['install']}[/]")
    console.print(t)
