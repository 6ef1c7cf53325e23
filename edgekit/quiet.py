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


# (logger, message fragment) of lines every conversion used to print: torchao's prebuilt kernels
# for another Python/torch ("Failed to load .../_C_mxfp8...so") and torch's notice that torchao's
# enums need no register_constant() any more. Neither is about the user's model.
KNOWN_NOISE: tuple[tuple[str, str], ...] = (
    ("torchao", "Failed to load"),
    ("torchao", "Skipping import of cpp extensions"),
    ("torch.utils._pytree", "is deprecated"),
    ("torch.utils._pytree", "register_constant"),
)
_PYTREE_WARNING = r".*(_pytree|register_pytree_node|register_constant).*deprecated.*"


class _KnownNoise(logging.Filter):
    def __init__(self, fragments: list[str]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get(VERBOSE_ENV):  # read per record: -v may be parsed after this is installed
            return True
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def hush_known_noise() -> None:
    """Drop the third-party lines in :data:`KNOWN_NOISE` (and torch's ``_pytree`` deprecation
    warnings) for the rest of the process, unless ``EDGEKIT_VERBOSE`` is set; idempotent."""
    by_logger: dict[str, list[str]] = {}
    for name, fragment in KNOWN_NOISE:
        by_logger.setdefault(name, []).append(fragment)
    for name, fragments in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _KnownNoise) for f in logger.filters):
            logger.addFilter(_KnownNoise(fragments))
    if not os.environ.get(VERBOSE_ENV):
        warnings.filterwarnings("ignore", message=_PYTREE_WARNING, category=FutureWarning)
        warnings.filterwarnings("ignore", message=_PYTREE_WARNING, category=DeprecationWarning)
