"""Plain values users pass to the API and the CLI (thread counts, run counts, batch sizes):
checked once at the boundary, so a bad one is a :class:`ConfigError` naming it, not a
``TypeError`` deep in a runtime, an ``IndexError`` in the statistics, or a hang.

>>> whole("runs", 3, minimum=1)
3
"""

from __future__ import annotations

import numbers
import os
import warnings

from edgekit.errors import ConfigError, EdgekitWarning


def whole(name: str, value: object, *, minimum: int, flag: str | None = None) -> int:
    """``value`` as an ``int`` of at least ``minimum``; bools, floats and strings are refused (a
    silent ``int("2")`` or ``int(2.5)`` would hide a mistake). ``flag`` is the CLI spelling."""
    shown = flag or name
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{shown} must be a whole number, got {value!r} ({type(value).__name__})",
                          fix=f"pass {name}={_example(value, minimum)}")
    if value < minimum:
        raise ConfigError(f"{shown} must be at least {minimum}, got {value}",
                          fix=f"pass {name}={minimum} or more")
    return int(value)


def _example(value: object, minimum: int) -> int:
    try:
        return max(minimum, int(float(value)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return max(minimum, 1)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_value(threads: object, *, flag: str | None = None) -> int | None:
    """A thread count for a runtime: None (the runtime's choice) or 1..CPUs. More than the machine
    has is capped with an :class:`EdgekitWarning`: 100,000 intra-op threads hang a runtime."""
    if threads is None:
        return None
    count = whole("threads", threads, minimum=1, flag=flag)
    cores = cpu_count()
    if count > cores:
        warnings.warn(f"threads={count} is more than the {cores} CPU(s) this process may use; "
                      f"using {cores}", EdgekitWarning, stacklevel=3)
        return cores
    return count


def timing_values(*, warmup: object, runs: object, min_time: object, batch: object,
                  cli: bool = False) -> None:
    """Refuse harness settings that cannot time anything: no runs, a negative batch or time."""
    def flag(name: str) -> str | None:
        return "--" + name.replace("_", "-") if cli else None

    whole("warmup", warmup, minimum=0, flag=flag("warmup"))
    if runs is not None:
        whole("runs", runs, minimum=1, flag=flag("runs"))
    whole("batch", batch, minimum=1, flag=flag("batch"))
    shown = flag("min_time") or "min_time"
    if isinstance(min_time, bool) or not isinstance(min_time, numbers.Real):
        raise ConfigError(f"{shown} must be a number of seconds, got {min_time!r}",
                          fix="pass min_time=2.0")
    if not min_time >= 0:  # also refuses NaN
        raise ConfigError(f"{shown} must be at least 0, got {float(min_time)}",
                          fix="pass min_time=0 or more (seconds)")
