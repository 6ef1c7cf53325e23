"""``edgekit devices``: the runtimes here, or on a device (``--on``); ``add``, ``setup``, ``remove``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from edgekit.cli._common import console, emit_json, errors, show
from edgekit.types import Device


def local_runtimes(as_json: bool) -> None:
    """Each registered runtime, whether it is installed, and the devices it can use here."""

    from edgekit.deps import available
    from edgekit.devices.config import load_inventory
    from edgekit.runtimes import RUNTIMES

    rows = []
    for name, cls in RUNTIMES.items():
        installed = available(cls.module)
        devs = {d.value: names for d, names in cls.devices().items()} if installed else {}
        rows.append({"runtime": name, "installed": installed, "version": cls.version() if installed else None,
                     "formats": [f.value for f in cls.formats], "devices": devs,
                     "install": None if installed else f"pip install 'edgekit[{cls.extra}]'"})
    saved = {n: s.url for n, s in load_inventory().items()}
    if as_json:
        emit_json({"schema": "edgekit.devices/1", "runtimes": rows, "remote": saved})
        return
    from edgekit.report import runtimes_table

    show(runtimes_table(rows, skip_device=Device.AUTO.value))  # install hints keep their [extra] brackets
    if saved:
        console.print("saved devices (edgekit devices --on NAME): " + ", ".join(f"[bold]{n}[/] {u}" for n, u in saved.items()))


def remote_info(name: str, as_json: bool) -> None:
    """The device's host block: arch, CPU, memory, OS, Python, runtimes and what each can use."""
    from rich.table import Table

    from edgekit.devices import connect

    with connect(name) as dev:
        info = dev.info()
    if as_json:
        emit_json(info)
        return
    gb = (info.get("memory_bytes") or 0) / 2**30
    console.print(f"[bold]{info['name']}[/] {info['transport']}: {info['arch']}, {info.get('cpu_model') or '?'}, "
                  f"{info['cores']} cores, {gb:.1f} GiB, {info['os']}, Python {info['python']} "
                  f"({info['python_executable']}), edgekit {info.get('edgekit') or '[red]not installed[/]'}")
    t = Table(title="runtimes on the device", title_justify="left")
    for col in ("runtime", "version", "can use"):
        t.add_column(col)
    for rt, r in info["runtimes"].items():
        t.add_row(rt, r["version"], ", ".join(r.get("can_use", [])))
    for rt, line in info["missing"].items():
        t.add_row(rt, "[red]not installed[/]", f"[dim]{escape(line)}[/]")
    console.print(t)


@click.group(invoke_without_command=True)
@click.option("--on", "on", metavar="DEVICE", help="Describe a saved device (or ssh://user@host) instead of this machine.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def devices(ctx: click.Context, on: str | None, as_json: bool) -> None:
    """The runtimes on this machine, or with --on those of a device reached over SSH."""
    if ctx.invoked_subcommand is not None:
        return
    with errors():
        remote_info(on, as_json) if on else local_runtimes(as_json)


@devices.command()
@click.argument("name")
@click.argument("target", metavar="ssh://USER@HOST[:PORT]")
@click.option("--identity", type=click.Path(path_type=Path), help="Private key file (default: ssh agent, ~/.ssh/config).")
@click.option("--python", "python", help="Python on the device (default python3), e.g. ~/venv/bin/python.")
@click.option("--workdir", help="Where pushed artifacts are kept on the device (default ~/.cache/edgekit-device).")
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record the device's host key if none is known "
              "(like OpenSSH accept-new); a changed key is always refused.")
def add(name: str, target: str, identity: Path | None, python: str | None, workdir: str | None,
        accept_new_host_key: bool) -> None:
    """Save a device, then connect once to check its host key and login."""
    from edgekit.devices import Device, parse_target, save_device

    with errors():
        spec = parse_target(target, name=name, identity=str(identity) if identity else None, python=python,
                            workdir=workdir)
        path = save_device(spec)
        console.print(f"saved [bold]{name}[/] ({spec.url}) in {path}")
        with Device(spec, accept_new_host_key=accept_new_host_key) as dev:
            console.print(f"connected to {dev.link.where}: host key verified")


@devices.command()
@click.argument("name")
@click.option("--runtime", default="onnxruntime", show_default=True,
              help="Runtime extra(s) to install there: onnxruntime, litert, openvino, llamacpp (comma-separated).")
@click.option("--wheel", type=click.Path(path_type=Path), help="Push and install this edgekit wheel instead of the index's.")
@click.option("--offline", is_flag=True, help="pip --no-index on the device (its dependencies must be there).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before running pip on the device.")
def setup(name: str, runtime: str, wheel: Path | None, offline: bool, yes: bool) -> None:
    """Run the runtime-only pip install (no torch, no converter) on a device, after asking."""
    from edgekit.devices import connect
    from edgekit.devices.setup import plan
    from edgekit.devices.setup import setup as run_setup

    with errors(), connect(name) as dev:
        p = plan(dev, runtime, wheel=wheel, offline=offline)
        console.print(f"on [bold]{name}[/] this will run:\n{escape(p.describe())}")
        if not yes and not click.confirm("go ahead?", default=False):
            raise SystemExit(1)
        console.print(escape(run_setup(dev, p)))


@devices.command()
@click.argument("name")
def remove(name: str) -> None:
    """Forget a saved device (its recorded host key stays in edgekit's known_hosts)."""
    from edgekit.devices import remove_device
    from edgekit.errors import ConfigError

    with errors():
        if not remove_device(name):
            raise ConfigError(f"no device named {name!r}", fix="`edgekit devices` lists the saved ones")
        console.print(f"removed {name}")


def on_option(fn: Any) -> Any:
    """``--on DEVICE`` for bench, run and matrix."""
    return click.option("--on", "on", metavar="DEVICE",
                        help="Measure on a saved device (or ssh://user@host) instead of here: the artifact is "
                        "pushed and the same harness runs there.")(fn)


@contextmanager
def remote(on: str | None) -> Iterator[Any]:
    """The connected device named by ``--on`` (closed afterwards), or None to run here."""
    if on is None:
        yield None
        return
    from edgekit.devices import connect

    with connect(on) as dev:
        yield dev


def run_on(on: str, artifact: Path, input_path: Path | None, output_path: Path | None, runtime: str | None,
           threads: int | None, as_json: bool) -> None:
    """``edgekit run --on``: the outputs from the device, compared with a local run on the same inputs."""
    from rich.table import Table

    from edgekit.devices import connect
    from edgekit.devices.parity import device_parity
    from edgekit.inputs import synthesize
    from edgekit.io import read_npz, write_npz
    from edgekit.runtime import load, resolve_artifact

    with errors():
        if input_path is not None:
            feed = read_npz(input_path)
        else:
            manifest = resolve_artifact(artifact).manifest
            if manifest is not None:
                feed = synthesize(manifest.signature)
            else:
                with load(artifact, runtime=runtime) as m:
                    feed = synthesize(m.signature)
        options = {k: v for k, v in {"runtime": runtime, "threads": threads}.items() if v is not None}
        with connect(on) as dev:
            result = device_parity(dev, artifact, [feed], **options)
        if output_path:
            write_npz(output_path, result.outputs[0])
        if as_json:
            emit_json({**result.to_dict(), "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                                       for k, v in result.outputs[0].items()}})
        else:
            t = Table(title=f"{artifact.name} on {on} vs here", title_justify="left")
            for col in ("output", "shape", "max abs err", "min cosine", "top-1", "agree"):
                t.add_column(col)
            for name, value in result.outputs[0].items():
                p = next((r for r in result.parity if r["name"] == name), None)
                t.add_row(name, f"{value.dtype}{list(value.shape)}", *(
                    (f"{p['max_abs_err']:.3g}", f"{p['min_cosine']:.6f}",
                     "-" if p["top1_agreement"] is None else f"{p['top1_agreement']:.2f}",
                     "[green]yes[/]" if p["agree"] else "[red]NO[/]") if p else ("-", "-", "-", "no local runtime")))
            console.print(t)
        if result.agree is False:
            raise SystemExit(3)
