"""Silence third-party chatter: exporters and quantizers print, log and warn; the library must not."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "EDGEKIT_VERBOSE"


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Within the block: the named loggers at ERROR, warnings ignored, stdout and stderr swallowed;
    nothing is silenced when ``EDGEKIT_VERBOSE`` is set (``edgekit -v``)."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    named = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in named]
    for lg in named:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(named, levels):
            lg.setLevel(level)
