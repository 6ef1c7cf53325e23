"""The ``edgekit`` command line: one module per command, registered on one group.

Exit codes: 0 success; 1 a user-caused error (message and fix on stderr) or a failed benchmark
row; 2 bad usage or an unknown option value; 3 an fp32 artifact failed verification; 4 a recipe
stage lost more of the task metric than the recipe allows.

A new command is a module here with a ``click.Command`` named like the module, listed in
``COMMANDS``; the modules import only click and rich at the top, so ``edgekit --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from edgekit.cli._common import Output, errors

__all__ = ["main", "COMMANDS", "Output", "errors"]  # errors(): the CLI's error path, for plugin commands

# module in edgekit.cli -> the command it defines (same name)
COMMANDS = ("convert", "inspect", "run", "bench", "matrix", "devices", "sensitivity", "serve", "compare")


class EdgekitGroup(click.Group):
    """The ``edgekit`` group; keeps ``bench --matrix SRC ...`` working as ``matrix SRC ...`` for one release."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, matrix_alias(args))

    def invoke(self, ctx: click.Context) -> Any:
        from edgekit.cli._common import show_warnings

        show_warnings()  # before the command's options are parsed: --threads may warn
        from edgekit.quiet import hush_known_noise

        if not ctx.params.get("verbose"):
            hush_known_noise()  # torchao/_pytree import chatter
        return super().invoke(ctx)


def matrix_alias(args: list[str]) -> list[str]:
    """``bench --matrix SRC REST`` (or ``--matrix=SRC``) -> ``matrix SRC REST``; anything else unchanged."""
    if not args or args[0] != "bench":
        return args
    rest = list(args[1:])
    for i, arg in enumerate(rest):
        if arg == "--matrix" and i + 1 < len(rest):
            source = rest[i + 1]
            del rest[i:i + 2]
        elif arg.startswith("--matrix="):
            source = arg.split("=", 1)[1]
            del rest[i]
        else:
            continue
        from edgekit.cli._common import err

        err.print("[dim]`bench --matrix SRC` is now `edgekit matrix SRC`; the alias goes in the next release[/]")
        return ["matrix", source, *rest]
    return args


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgekit")
@click.option("-q", "--quiet", is_flag=True, help="Print results only: no progress, notes or hints.")
@click.option("-v", "--verbose", is_flag=True,
              help="Let exporters', quantizers' and runtimes' own output and warnings through.")
def main(quiet: bool = False, verbose: bool = False) -> None:
    """edgekit: convert PyTorch models to edge formats, verify, run and benchmark them.

    \b
    edgekit convert                               # built-in digits CNN -> ONNX fp32/int8/int4
    edgekit convert my_hf_dir --to onnx --precision fp32,int8,int4 --calib calib.npz --out out/
    edgekit inspect out/my_hf_dir-int8.onnx
    edgekit run out/my_hf_dir-int8.onnx --input sample.npz
    edgekit bench out/*.onnx
    edgekit matrix my_hf_dir --eval test.jsonl --out matrix/
    edgekit devices
    edgekit compare old.json new.json --max-regression 10%
    """
    import os

    from edgekit.cli._common import Output

    Output.quiet, Output.verbose = quiet, verbose
    if verbose and "EDGEKIT_VERBOSE" not in os.environ:  # read by edgekit.quiet.quiet(), here and in workers
        os.environ["EDGEKIT_VERBOSE"] = "1"
        # the command ends the process; where it does not (an app or a test calling main), undo it
        click.get_current_context().call_on_close(lambda: os.environ.pop("EDGEKIT_VERBOSE", None))


def _register() -> None:
    for name in COMMANDS:
        module: Any = importlib.import_module(f"edgekit.cli.{name}")
        main.add_command(getattr(module, name))


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
