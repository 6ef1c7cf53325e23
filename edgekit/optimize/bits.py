"""Bit widths of an artifact's stored weights, so a precision name never over-promises.

Each converter counts the weight values it wrote at each bit width (ONNX initializers, OpenVINO
constants, TFLite buffers; tensors of two or more dimensions, so biases, scales and zero points
do not count) and records their shares in the manifest as ``conversion.quantized_fraction``
(``{"4": 0.03, "8": 0.95, "32": 0.02}``). An ``int4`` file with no 4-bit weight at all is refused;
one where the named width holds under :data:`FLAG_BELOW` of the weights is flagged in the table
("int4: 3% of weights 4-bit").

>>> fractions({4: 3, 8: 95, 32: 2})
{'4': 0.03, '8': 0.95, '32': 0.02}
>>> flag("int4", {"4": 0.03, "8": 0.95, "32": 0.02})
'int4: 3% of weights 4-bit'
"""

from __future__ import annotations

from collections.abc import Mapping

from edgekit.errors import QuantizationError

FLAG_BELOW = 0.5  # the named bit width holds less than this share of the weights: say so
# the bit width a precision's name promises for (most of) the weights
NOMINAL = {"int4": 4, "int8": 8, "int8-dynamic": 8, "int8-weights": 8, "fp16": 16}


def fractions(counts: Mapping[int, int]) -> dict[str, float]:
    """Weight values per bit width -> each width's share, widest last, rounded to 4 places."""
    total = sum(counts.values())
    if not total:
        return {}
    return {str(b): round(counts[b] / total, 4) for b in sorted(counts) if counts[b]}


def flag(precision: str, shares: Mapping[str, float]) -> str | None:
    """"int4: 3% of weights 4-bit" when the width ``precision`` names holds under FLAG_BELOW."""
    bits = NOMINAL.get(precision)
    if bits is None or not shares:
        return None
    share = float(shares.get(str(bits), 0.0))
    return f"{precision}: {share:.0%} of weights {bits}-bit" if share < FLAG_BELOW else None


class NoLowBitWeights(QuantizationError):
    """An int4 variant with no 4-bit weight: refused when asked for, skipped among the defaults."""


def require(precision: str, shares: Mapping[str, float], fmt: str) -> None:
    """Refuse an int4 variant that holds no 4-bit weight (its name would be untrue)."""
    if precision == "int4" and shares and not shares.get("4"):
        held = ", ".join(f"{float(v):.0%} {k}-bit" for k, v in shares.items())
        raise NoLowBitWeights(
            f"{fmt} int4 holds no 4-bit weight ({held}): no layer of this model has a 4-bit kernel here",
            fix="use int8-weights (same file), or a format whose int4 covers these layers "
            "(e.g. OpenVINO with -O int4_all_layers=true for Linear-heavy models)")
