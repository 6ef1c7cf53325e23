"""Sizes edgekit refuses before allocating anything for them.

A manifest, an image header or a typed shape can ask for gigabytes; checking the number first turns
what would be minutes of swapping (or a MemoryError) into an error that names the limit.
"""

from __future__ import annotations

from math import prod

from edgekit.errors import EdgekitError

# decoded images: 8192 x 8192 (67,108,864 pixels, 192 MiB as RGB bytes); Pillow's own bomb check
# starts at 89M pixels (a warning) and raises only past twice that
MAX_IMAGE_PIXELS = 8192 * 8192
# one tensor edgekit builds from a recorded shape (example inputs, synthesized benchmark feeds):
# 2**28 elements, 1 GiB as float32
MAX_TENSOR_ELEMENTS = 1 << 28


def check_elements(shape: tuple[int, ...] | list[int], what: str, error: type[EdgekitError], fix: str) -> None:
    """Raise ``error`` when a tensor of ``shape`` would hold more than :data:`MAX_TENSOR_ELEMENTS`."""
    n = prod(int(s) for s in shape)
    if n > MAX_TENSOR_ELEMENTS:
        raise error(f"{what} {list(shape)} holds {n:,} elements, more than edgekit's limit of "
                    f"{MAX_TENSOR_ELEMENTS:,}", fix=fix)
