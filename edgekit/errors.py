"""One error hierarchy: every failure a user can cause is an :class:`EdgekitError`.

Each error carries the problem and, where there is one, the fix; ``str(err)`` shows both.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose.

    >>> str(EdgekitError("no such file: m.onnx", fix="check the path"))
    'no such file: m.onnx\\n  fix: check the path'
    """

    exit_code = 1

    def __init__(self, problem: str, *, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


def first_line(e: BaseException) -> str:
    """The first non-blank line of a native library's message (its class name when it has none),
    for a problem text that stays one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class EdgekitWarning(UserWarning):
    """Something edgekit adjusted or cleaned up for the user (a thread count capped, stale staging
    folders removed); the library warns, the CLI prints it as ``warning: ...``."""


class ConfigError(EdgekitError):
    """An option, format, precision or device value that edgekit does not know."""

    exit_code = 2


class RecipeError(ConfigError):
    """A recipe that does not validate; ``key`` is the path of the offending key, e.g. ``prune.sparsity``."""

    def __init__(self, key: str, problem: str, *, fix: str | None = None, origin: str | None = None) -> None:
        where = f"{origin}: " if origin else ""
        super().__init__(f"{where}recipe key {key}: {problem}" if key else f"{where}recipe: {problem}", fix=fix)
        self.key, self.detail, self.origin = key, problem, origin


class MissingDependencyError(EdgekitError):
    """An optional package needed for this step is not installed."""


class ArtifactError(EdgekitError):
    """A model file that does not exist, is truncated, corrupt or of an unknown format."""


class SourceError(EdgekitError):
    """A model source (module, Hugging Face directory, .pt2, factory) that cannot be loaded."""


class ExportError(EdgekitError):
    """The exporter could not translate the model (e.g. an operator it does not support)."""


class QuantizationError(EdgekitError):
    """A quantization step failed."""


class CalibrationError(EdgekitError):
    """Calibration data that is missing, mis-named or mis-shaped."""


class InputError(EdgekitError):
    """Inputs given at run time that do not match the model's signature."""


class DeviceUnavailableError(EdgekitError):
    """The requested device is not usable by the runtime on this machine."""


class VerificationError(EdgekitError):
    """A converted artifact does not compute what the original computed (fp32 out of tolerance)."""

    exit_code = 3

    def __init__(self, problem: str, *, fix: str | None = None, artifacts: list | None = None) -> None:
        super().__init__(problem, fix=fix)
        self.artifacts = artifacts or []


class ConversionError(EdgekitError):
    """One or more requested variants could not be produced; ``artifacts`` holds every row."""

    def __init__(self, problem: str, *, fix: str | None = None, artifacts: list | None = None) -> None:
        super().__init__(problem, fix=fix)
        self.artifacts = artifacts or []


class GateError(EdgekitError):
    """A recipe stage lost more of the task metric than the recipe allows; ``report`` names the
    stage, metric, drop and allowed drop (and every stage measured before it)."""

    exit_code = 4

    def __init__(self, problem: str, *, fix: str | None = None, report: dict | None = None,
                 artifacts: list | None = None) -> None:
        super().__init__(problem, fix=fix)
        self.report = report or {}
        self.artifacts = artifacts or []


class RuntimeFailure(EdgekitError):
    """The runtime failed while loading or running a valid-looking artifact."""


class RemoteDeviceError(EdgekitError):
    """A device reached over SSH that cannot be connected to, trusted or used; names the device."""

    def __init__(self, device: str, problem: str, *, fix: str | None = None) -> None:
        super().__init__(f"device {device}: {problem}", fix=fix)
        self.device = device
