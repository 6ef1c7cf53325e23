"""What the kiosk does with one request: check the input, classify it, time each stage.

The model is served by ``edgekit serve`` (:mod:`edgekit.serve`): it was loaded with
``edgekit.load`` after its sha256 was checked, and preprocessing (tokenizer, image resize and
normalisation) is the artifact's own task pipeline, so the kiosk holds no model code. Requests go
through the server's queue like any other client's. Nothing here imports torch: a kiosk installs
``edgekit[onnxruntime,serve]`` (or another runtime extra).
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from typing import TYPE_CHECKING, Any

import edgekit

if TYPE_CHECKING:
    from edgekit.serve.served import ServedModel

MAX_TEXT_CHARS = 5_000
MAX_IMAGE_PIXELS = 25_000_000  # larger images are refused before Pillow decodes them
MAX_TOP_K = 10


class BadInput(Exception):
    """A request the kiosk refuses; ``status`` is the HTTP status, ``fix`` tells the user what to do."""

    def __init__(self, problem: str, fix: str, status: int = 400) -> None:
        super().__init__(problem)
        self.problem, self.fix, self.status = problem, fix, status


class Predictor:
    """The kiosk's view of the one classifier the server holds (text or image)."""

    def __init__(self, served: ServedModel) -> None:
        if served.pipeline is None or "classify" not in type(served.pipeline).verbs:
            raise edgekit.ConfigError(f"{served.model.path.name} is not a classifier (task {served.task!r})",
                                      fix="serve a text or image classifier converted by edgekit")
        self.served = served
        self.model = served.model
        self.kind: str = served.pipeline.input_kind  # "text" | "image"

    def info(self) -> dict[str, Any]:
        """What the page shows about the model: name, task, input kind, labels, runtime."""
        m = self.model.manifest
        labels = (m.preprocess.get("id2label") if m else None) or {}
        return {
            "artifact": self.model.path.name,
            "format": self.model.format.value,
            "precision": m.precision.value if m else None,
            "task": self.served.task,
            "input": self.kind,
            "labels": [labels[k] for k in sorted(labels, key=lambda k: int(k) if k.isdigit() else k)],
            "size_bytes": self.model.size_bytes,
            **self.model.describe(),
        }

    async def warm_up(self, calls: int = 3) -> None:
        """A few requests before the first visitor (the runtime's first runs and Pillow's first
        decode are slow), so the first answer shows the steady latency."""
        payload = {"text": "warm up"} if self.kind == "text" else {"image": _blank_png()}
        for _ in range(calls):
            await self.predict(payload)

    async def predict(self, payload: Any) -> dict[str, Any]:
        """Answer one ``/api/predict`` body: ``{"text": ...}`` or ``{"image": base64}``, ``top_k``."""
        if not isinstance(payload, dict):
            raise BadInput("the request body must be a JSON object",
                           'send {"text": "..."} or {"image": "<base64 image>"}')
        top_k = payload.get("top_k", 3)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise BadInput(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}", "send e.g. top_k=3")
        given = [k for k in ("text", "image") if k in payload]
        if len(given) != 1:
            raise BadInput("send exactly one of text or image", 'e.g. {"text": "oil prices rose"}')
        if given[0] != self.kind:
            raise BadInput(f"this model classifies {self.kind}s, not {given[0]}s ({self.model.path.name})",
                           "type some text" if self.kind == "text" else "drop or choose an image file")
        started = time.perf_counter()
        item = _text(payload["text"]) if self.kind == "text" else _image(payload["image"])
        decode_ms = (time.perf_counter() - started) * 1000.0
        # the server's queue and the artifact's pipeline: tokenize/resize, run the model, rank
        (result,), stages = await self.served.classify([item], top_k)
        timing = {k: stages[k] for k in ("queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms")}
        timing["decode_ms"] = decode_ms
        timing["total_ms"] = (time.perf_counter() - started) * 1000.0
        return {**result, "timing": timing}


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadInput(f"text must be a string, got {type(value).__name__}", "type some text")
    text = value.strip()
    if not text:
        raise BadInput("the text is empty", "type some text before pressing Classify")
    if len(text) > MAX_TEXT_CHARS:
        raise BadInput(f"the text has {len(text):,} characters, more than {MAX_TEXT_CHARS:,}",
                       "send a shorter text", status=413)
    return text


def _image(value: Any) -> Any:
    """A base64 string (or ``data:image/...;base64,`` URL) -> a decoded Pillow image."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str) or not value:
        raise BadInput("image must be a non-empty base64 string", "drop or choose an image file")
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("the image is not valid base64", "send the file's bytes base64-encoded") from None
    try:
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise BadInput(f"the image is {width}x{height} pixels, more than {MAX_IMAGE_PIXELS:,}",
                           "send a smaller image", status=413)
        image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise BadInput("the file is not an image Pillow can read", "drop a PNG, JPEG, GIF, BMP or WebP file") \
            from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInput(f"the image could not be decoded: {e}", "drop an intact image file") from None
    return image


def _blank_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
