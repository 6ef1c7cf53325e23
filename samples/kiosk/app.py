"""Kiosk: a local page where a person types text or drops an image and sees the prediction.

    python samples/kiosk/app.py ARTIFACT [--port 8000] [--device cpu] [--threads N]

Runs ``edgekit serve`` (:mod:`edgekit.serve`) for one edgekit classifier artifact (text or image)
on http://127.0.0.1:PORT/ only, with the kiosk's page and ``/api`` routes added to it: one server,
which also answers the Open Inference Protocol (``/v2/...``) and ``/metrics``. ``--port 0`` picks a
free port. The page shows the label, its score and the server's latency (preprocessing and
inference, in ms). Needs only the runtime and the server: ``pip install 'edgekit[onnxruntime,serve]'``.

Endpoints: ``GET /`` the page, ``GET /healthz``, ``GET /api/info`` (the model),
``POST /api/predict`` with ``{"text": "..."}`` or ``{"image": "<base64>"}`` (and ``top_k``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from predictor import BadInput, Predictor  # beside this file, on sys.path when run as a script

import edgekit

HOST = "127.0.0.1"  # never another interface: the kiosk is for the screen it runs on
STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/kiosk.js": ("kiosk.js", "text/javascript; charset=utf-8"),
         "/kiosk.css": ("kiosk.css", "text/css; charset=utf-8")}
# the page loads nothing from elsewhere; previews of dropped images are blob: URLs
CSP = "default-src 'self'; img-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP}
NO_ARTIFACT = """\
no ARTIFACT given: the kiosk serves an edgekit classifier artifact. Make one first, e.g.

  edgekit convert --out kiosk-model          # the built-in digits CNN (8x8 digit images)
  python samples/kiosk/app.py kiosk-model/digits-cnn-fp32.onnx

or a text classifier (MiniLM fine-tuned on Reuters R8; every variant lands in samples-out/text-classifier/):

  python samples/text_classifier.py
  python samples/kiosk/app.py samples-out/text-classifier/r8-minilm-fp32.onnx
"""


class Kiosk:
    """The kiosk's routes on top of the server: the page, ``/healthz``, ``/api/info``, ``/api/predict``."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None

    def routes(self) -> list[Any]:
        from starlette.routing import Route

        return [*(Route(path, self.page) for path in PAGES), Route("/healthz", self.health),
                Route("/api/info", self.info), Route("/api/predict", self.predict, methods=["POST"])]

    async def ready(self, state: Any) -> None:
        """Called once the server has loaded the model: check it is a classifier, warm it up, announce."""
        (served,) = state.models.values()
        self.predictor = Predictor(served)
        await self.predictor.warm_up()
        print(f"kiosk: serving {served.model.path.name} ({self.predictor.kind} classifier) "
              f"at http://{HOST}:{state.port}/", flush=True)

    async def page(self, request: Any) -> Any:
        from starlette.responses import Response

        name, ctype = PAGES[request.url.path]
        return Response((STATIC / name).read_bytes(), headers={**HEADERS, "Content-Type": ctype})

    async def health(self, request: Any) -> Any:
        return self._json({"status": "ok", "artifact": self._predictor().model.path.name})

    async def info(self, request: Any) -> Any:
        config = request.app.state.edgekit.config
        return self._json({**self._predictor().info(), "max_body_bytes": config.max_body_bytes})

    async def predict(self, request: Any) -> Any:
        from edgekit.serve.responses import read_json

        config = request.app.state.edgekit.config
        try:
            answer = await self._predictor().predict(await read_json(request, config.max_body_bytes))
        except BadInput as e:
            return self._json({"error": e.problem, "fix": e.fix}, e.status)
        except edgekit.EdgekitError as e:  # the server's own answer: 400/413 body, 503 busy, 422 model refused
            from edgekit.serve.responses import status_of

            status = 422 if status_of(e) == 500 else status_of(e)
            return self._json({"error": e.problem, "fix": e.fix or "try another input"}, status)
        return self._json(answer)

    def _predictor(self) -> Predictor:
        from edgekit.serve.responses import HTTPError

        if self.predictor is None:
            raise HTTPError(503, "the model is still loading", fix="reload the page in a moment")
        return self.predictor

    @staticmethod
    def _json(data: Any, status: int = 200) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(data, status_code=status, headers=HEADERS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", nargs="?", help="an edgekit classifier artifact (.onnx, .xml, .tflite)")
    ap.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1; 0 picks a free one")
    ap.add_argument("--device", default="cpu", help="cpu, gpu, npu or auto")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (the runtime's default)")
    ap.add_argument("--max-mb", type=float, default=10.0, help="largest request body, in MB")
    args = ap.parse_args(argv)
    if args.artifact is None:
        sys.stderr.write(NO_ARTIFACT)
        return 2
    if not 0 <= args.port <= 65535:
        ap.error(f"--port must be from 0 to 65535, got {args.port}")
    from edgekit.serve import ServeConfig
    from edgekit.serve.registry import find_artifacts
    from edgekit.serve.server import Server

    kiosk = Kiosk()
    try:
        config = ServeConfig(host=HOST, port=args.port, device=args.device, threads=args.threads,
                             max_body_bytes=int(args.max_mb * 1024 * 1024), max_batch=1, name="kiosk")
        server = Server(find_artifacts([args.artifact]), config, routes=kiosk.routes(), on_ready=kiosk.ready)
    except edgekit.EdgekitError as e:
        sys.stderr.write(f"kiosk: cannot serve {args.artifact}: {e}\n")
        return 1
    try:
        server.bind()
    except edgekit.EdgekitError as e:
        sys.stderr.write(f"kiosk: {e}\n")
        return 1
    try:
        server.run()  # SIGTERM (a service manager's stop) or Ctrl-C: drain, then a clean exit
    except edgekit.EdgekitError as e:
        sys.stderr.write(f"kiosk: cannot serve {args.artifact}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
