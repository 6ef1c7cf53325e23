"""Images to model inputs as the manifest's ``preprocess["image"]`` records (Pillow and numpy).

Steps, in order: read (a path, bytes, a file object, a PIL image or an array) and convert to the model's channels;
resize (the shorter side to ``resize`` then a centre crop to ``crop``, or straight to ``size``);
map the 0..255 pixel values linearly to 0..``pixel_max`` (the range the model's training pixels
had: 16 for scikit-learn's digits); multiply by ``scale``; subtract ``mean`` and divide by ``std``
per channel; lay out as ``NCHW`` or ``NHWC``.

A uint8 array is an image (0..255, H x W or H x W x C). A float array holds raw pixel values
already in 0..``pixel_max`` (e.g. ``load_digits().images``); it is resized if its size differs.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError, InputError
from edgekit.limits import MAX_IMAGE_PIXELS

LAYOUTS = ("NCHW", "NHWC")
# Pillow's resampling filters by name; Hugging Face preprocessor configs give their int codes
RESAMPLE: dict[str, int] = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class ImageSpec:
    """How the model's training images were prepared (``preprocess["image"]`` in the manifest)."""

    size: tuple[int, int]  # (H, W) the model takes
    channels: int = 3
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    resize: int | None = None  # shorter side before the centre crop; None: resize straight to size
    crop: int | None = None  # centre crop (square) after the resize; None: size
    resample: str = "bilinear"
    pixel_max: float = 255.0  # file pixels 0..255 are mapped to 0..pixel_max before scale

    def __post_init__(self) -> None:
        def bad(what: str, fix: str) -> ConfigError:
            return ConfigError(f"preprocess image: {what}", fix=fix)

        if len(self.size) != 2 or min(self.size) < 1:
            raise bad(f"size {list(self.size)} is not [H, W]", "give e.g. size=[224, 224]")
        if self.size[0] * self.size[1] > MAX_IMAGE_PIXELS:
            raise bad(f"size {self.size[0]}x{self.size[1]} is more than edgekit's limit of {MAX_IMAGE_PIXELS:,} pixels",
                      "give the size the model takes, e.g. size=[224, 224]")
        if self.channels not in (1, 3):
            raise bad(f"channels={self.channels}", "channels is 1 (grey) or 3 (RGB)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise bad(f"{name} has {len(values)} values for {self.channels} channel(s)",
                          f"give one {name} per channel, or one for all")
        if any(s == 0 for s in self.std):
            raise bad("std holds a zero", "std values must be non-zero")
        if self.layout not in LAYOUTS:
            raise bad(f"layout {self.layout!r}", f"layout is one of: {', '.join(LAYOUTS)}")
        if self.resample not in RESAMPLE:
            raise bad(f"resample {self.resample!r}", f"resample is one of: {', '.join(RESAMPLE)}")
        if self.pixel_max <= 0 or self.scale == 0:
            raise bad("pixel_max and scale must be non-zero", "e.g. scale=1/255, pixel_max=255")

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> ImageSpec:
        """Validate a ``preprocess["image"]`` mapping (unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"preprocess image: unknown key(s) {unknown}", fix=f"known keys: {', '.join(sorted(known))}")
        if "size" not in d:
            raise ConfigError("preprocess image: no size", fix="give size=[H, W], e.g. [224, 224]")
        values = dict(d)
        size = values["size"]
        values["size"] = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        for key in ("mean", "std"):
            if key in values:
                v = values[key]
                values[key] = (float(v),) if isinstance(v, (int, float)) else tuple(float(x) for x in v)
        for key in ("resize", "crop"):
            if values.get(key) is not None:
                values[key] = int(values[key])
        for key in ("scale", "pixel_max"):
            if key in values:
                values[key] = float(values[key])
        if "channels" in values:
            values["channels"] = int(values["channels"])
        if "layout" in values:
            values["layout"] = str(values["layout"]).upper()
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "size": list(self.size), "mean": list(self.mean), "std": list(self.std)}


def from_hf_preprocessor(config: Mapping[str, Any], channels: int, default_size: int) -> ImageSpec:
    """The spec a Hugging Face ``preprocessor_config.json`` (ViT/ConvNeXt/ResNet style) describes."""
    size = config.get("size", default_size)
    resize = crop = None
    if isinstance(size, Mapping) and "shortest_edge" in size:  # resize the short side, then crop
        resize = int(size["shortest_edge"])
        crop_size = config.get("crop_size", resize)
        crop = int(crop_size.get("height", resize) if isinstance(crop_size, Mapping) else crop_size)
        if not config.get("do_center_crop", True):
            crop = resize
        hw = (crop, crop)
    elif isinstance(size, Mapping):
        hw = (int(size.get("height", default_size)), int(size.get("width", default_size)))
    else:
        hw = (int(size), int(size))
    if config.get("do_center_crop") and resize is None and config.get("crop_size"):
        cs = config["crop_size"]
        crop = int(cs.get("height") if isinstance(cs, Mapping) else cs)
        resize, hw = min(hw), (crop, crop)
    normalize = config.get("do_normalize", True)
    codes = {v: k for k, v in RESAMPLE.items()}
    return ImageSpec(
        size=hw, channels=channels,
        scale=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
        mean=tuple(float(x) for x in config.get("image_mean", [0.5] * channels)) if normalize else (0.0,),
        std=tuple(float(x) for x in config.get("image_std", [0.5] * channels)) if normalize else (1.0,),
        layout="NCHW", resize=resize, crop=crop, resample=codes.get(int(config.get("resample", 2)), "bilinear"))


def _open(item: Any) -> Any:
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (str, Path)):
        source: Any = Path(item).expanduser()
        if not source.is_file():
            raise InputError(f"no such image file: {source}", fix="check the path")
        what = str(source)
    elif isinstance(item, (bytes, bytearray)) or hasattr(item, "read"):  # an upload's content or stream
        source, what = (io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item), "the image data"
    else:
        raise InputError(f"an image is a path, bytes, a file object, a PIL image or a numpy array, not a "
                         f"{type(item).__name__}", fix="pass e.g. m.classify('photo.jpg')")
    try:
        with warnings.catch_warnings():  # Pillow warns from 89M pixels; edgekit's own limit is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                _check_pixels(what, im.size[0] * im.size[1], f"{im.size[0]}x{im.size[1]}")
                im.load()
                return im
    except Image.DecompressionBombError as e:  # raised by open() itself, before the size is known
        found = re.search(r"\((\d+) pixels\)", str(e))
        _check_pixels(what, int(found[1]) if found else MAX_IMAGE_PIXELS + 1, None)
        raise  # unreachable: _check_pixels raised
    except OSError as e:
        raise InputError(f"{what} is not an image Pillow can read: {e}", fix="pass a PNG, JPEG, BMP, ... image") from e


def _check_pixels(what: str, pixels: int, size: str | None) -> None:
    """Refuse images past :data:`~edgekit.limits.MAX_IMAGE_PIXELS` before they are decoded."""
    if pixels > MAX_IMAGE_PIXELS:
        dims = f"{size} = " if size else ""
        raise InputError(f"{what} is {dims}{pixels:,} pixels, more than edgekit's limit of {MAX_IMAGE_PIXELS:,}",
                         fix="resize the image first (the model takes a small fixed size anyway); a file that "
                         "declares a huge size in a few bytes is a decompression bomb")


def _resize(im: Any, spec: ImageSpec) -> Any:
    from PIL import Image

    flt = Image.Resampling(RESAMPLE[spec.resample])
    h, w = spec.size
    if spec.resize is not None:
        short = min(im.size)
        if short != spec.resize:
            # the long side truncated, as torchvision's Resize and Hugging Face processors do
            w0, h0 = im.size
            size = (spec.resize, int(spec.resize * h0 / w0)) if w0 <= h0 else (int(spec.resize * w0 / h0), spec.resize)
            im = im.resize(size, flt)
        ch, cw = (spec.crop, spec.crop) if spec.crop else (h, w)
        left, top = (im.size[0] - cw) // 2, (im.size[1] - ch) // 2
        im = im.crop((left, top, left + cw, top + ch))
    if im.size != (w, h):
        im = im.resize((w, h), flt)
    return im


def _float_pixels(arr: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """A float array of raw pixel values (0..pixel_max), resized per channel if needed: (H, W, C)."""
    from PIL import Image

    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim == 3 and arr.shape[0] == spec.channels and arr.shape[-1] != spec.channels:
        arr = np.transpose(arr, (1, 2, 0))  # CHW -> HWC
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise InputError(f"an image array has shape {list(arr.shape)}", fix="pass H x W or H x W x C arrays")
    if arr.shape[-1] != spec.channels:
        arr = arr.mean(axis=-1, keepdims=True) if spec.channels == 1 else np.repeat(arr, 3, axis=-1)
    if arr.shape[:2] != spec.size:
        planes = [np.asarray(_resize(Image.fromarray(arr[..., c].astype(np.float32), mode="F"), spec))
                  for c in range(arr.shape[-1])]
        arr = np.stack(planes, axis=-1)
    return arr.astype(np.float32)


def load_pixels(item: Any, spec: ImageSpec) -> np.ndarray:
    """One image as float32 (H, W, C) in 0..pixel_max at the model's size."""
    if isinstance(item, np.ndarray) and item.dtype.kind == "f":
        return _float_pixels(item, spec)
    if isinstance(item, np.ndarray):
        from PIL import Image

        arr = item.astype(np.uint8) if item.dtype != np.uint8 else item
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        try:
            im = Image.fromarray(arr)
        except TypeError as e:
            raise InputError(f"an image array has shape {list(item.shape)}",
                             fix="pass H x W (grey) or H x W x 3 (RGB) uint8 arrays") from e
    else:
        im = _open(item)
    im = _resize(im.convert("L" if spec.channels == 1 else "RGB"), spec)
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return arr * (spec.pixel_max / 255.0) if spec.pixel_max != 255.0 else arr


def to_tensor(images: Sequence[np.ndarray], spec: ImageSpec, layout: str | None = None) -> np.ndarray:
    """Stack (H, W, C) pixel arrays into the model's normalised batch in ``layout`` (default ``spec.layout``)."""
    x = np.stack(images).astype(np.float32) * np.float32(spec.scale)
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)) if (layout or spec.layout) == "NCHW" else x)
