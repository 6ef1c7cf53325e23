"""``python -m edgekit._run_worker``: the child side of :mod:`edgekit.isolation`."""

from edgekit.isolation import _worker

if __name__ == "__main__":
    _worker()
