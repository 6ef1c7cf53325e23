"""``python -m edgekit``: the command line."""

from edgekit.cli import main

main()
