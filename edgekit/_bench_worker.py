"""Subprocess entry for isolated benchmarks: reads a JSON job on stdin, prints a JSON row."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from edgekit.harness import benchmark

    job = json.loads(sys.stdin.read())
    path = job.pop("path")
    result = benchmark(path, isolated=False, **job)
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")


if __name__ == "__main__":
    main()
