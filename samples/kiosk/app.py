"""Kiosk: a local page where a person types text or drops an image and sees the prediction.

    python samples/kiosk/app.py ARTIFACT [--port 8000] [--device cpu] [--threads N]

Serves one edgekit classifier artifact (text or image) on http://127.0.0.1:PORT/ only; ``--port 0``
picks a free port. The page shows the label, its score and the server's latency (preprocessing
and inference, in ms). Needs only the runtime: ``pip install 'edgekit[onnxruntime]'``, no torch.

Endpoints: ``GET /`` the page, ``GET /healthz``, ``GET /api/info`` (the model),
``POST /api/predict`` with ``{"text": "..."}`` or ``{"image": "<base64>"}`` (and ``top_k``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from predictor import BadInput, Predictor  # beside this file, on sys.path when run as a script

import edgekit

HOST = "127.0.0.1"  # never another interface: the kiosk is for the screen it runs on
STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/kiosk.js": ("kiosk.js", "text/javascript; charset=utf-8"),
         "/kiosk.css": ("kiosk.css", "text/css; charset=utf-8")}
DRAIN_LIMIT = 64 * 1024 * 1024  # a larger refused body is not read: the connection is closed
# the page loads nothing from elsewhere; previews of dropped images are blob: URLs
CSP = "default-src 'self'; img-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
NO_ARTIFACT = """\
no ARTIFACT given: the kiosk serves an edgekit classifier artifact. Make one first, e.g.

  edgekit convert --out kiosk-model          # the built-in digits CNN (8x8 digit images)
  python samples/kiosk/app.py kiosk-model/digits-cnn-fp32.onnx

or a text classifier (MiniLM fine-tuned on Reuters R8; every variant lands in samples-out/text-classifier/):

  python samples/text_classifier.py
  python samples/kiosk/app.py samples-out/text-classifier/r8-minilm-fp32.onnx
"""


class KioskServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that holds the predictor and the request size limit."""

    daemon_threads = True

    def __init__(self, port: int, predictor: Predictor, max_body: int) -> None:
        super().__init__((HOST, port), Handler)
        self.predictor = predictor
        self.max_body = max_body
        port = self.server_address[1]
        # Host names a browser on this machine uses; any other is a DNS-rebinding page, refused
        self.allowed_hosts = {f"{name}:{port}" for name in (HOST, "localhost")}
        if port == 80:  # a browser leaves the default port out of Host
            self.allowed_hosts |= {HOST, "localhost"}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


class Handler(BaseHTTPRequestHandler):
    server: KioskServer
    server_version = "edgekit-kiosk"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok", "artifact": self.server.predictor.model.path.name})
        elif path == "/api/info":
            self._json(HTTPStatus.OK, {**self.server.predictor.info(), "max_body_bytes": self.server.max_body})
        elif path in PAGES:
            name, ctype = PAGES[path]
            self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), ctype)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no page {path}", "open / for the kiosk page")

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return
        if self.path.split("?", 1)[0] != "/api/predict":
            self._error(HTTPStatus.NOT_FOUND, f"no endpoint {self.path}", "POST to /api/predict")
            return
        body = self._body()
        if body is None:
            return
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            self._error(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {e}", 'send {"text": "..."}')
            return
        try:
            answer = self.server.predictor.predict(payload)
        except BadInput as e:
            self._error(e.status, e.problem, e.fix)
        except edgekit.EdgekitError as e:  # the model refused the input (shape, dtype...)
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, e.problem, e.fix or "try another input")
        except Exception as e:  # a bug must not take the kiosk down: answer, log, keep serving
            self.log_error("predict failed: %r", e)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"the model failed: {type(e).__name__}: {e}",
                        "see the kiosk's log; try another input")
        else:
            self._json(HTTPStatus.OK, answer)

    # -- helpers ---------------------------------------------------------------------------
    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").lower()
        if host in self.server.allowed_hosts:
            return True
        self._error(HTTPStatus.FORBIDDEN, f"host {host!r} is not this kiosk",
                    f"open {self.server.url} on the kiosk itself")
        return False

    def _body(self) -> bytes | None:
        """The request body within the size limit, or None after answering the error."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None or not length.isdigit():
            self._error(HTTPStatus.LENGTH_REQUIRED, "the request has no Content-Length",
                        "send the body with a Content-Length header", close=True)
            return None
        size = int(length)
        if size > self.server.max_body:
            if size <= DRAIN_LIMIT:  # read it away, so the client sees the answer, not a reset
                while size > 0 and (chunk := self.rfile.read(min(1 << 20, size))):
                    size -= len(chunk)
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"the request is {int(length):,} bytes, more than {self.server.max_body:,}",
                        "send a smaller image, or start the kiosk with a larger --max-mb", close=True)
            return None
        return self.rfile.read(size)

    def _error(self, status: int, problem: str, fix: str, *, close: bool = False) -> None:
        self._json(status, {"error": problem, "fix": fix}, close=close)

    def _json(self, status: int, data: dict[str, Any], *, close: bool = False) -> None:
        body = json.dumps(data).encode()
        self._send(status, body, "application/json", close=close)

    def _send(self, status: int, body: bytes, ctype: str, *, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        if close:  # an unread body must not be parsed as the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        sys.stderr.write(f"kiosk: {self.address_string()} {format % args}\n")


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
    try:
        predictor = Predictor(args.artifact, device=args.device, threads=args.threads)
        predictor.warm_up()
    except edgekit.EdgekitError as e:
        sys.stderr.write(f"kiosk: cannot serve {args.artifact}: {e}\n")
        return 1
    try:
        server = KioskServer(args.port, predictor, int(args.max_mb * 1024 * 1024))
    except OSError as e:
        predictor.close()
        sys.stderr.write(f"kiosk: cannot listen on {HOST}:{args.port}: {e.strerror}\n"
                         "  fix: pick another --port, or --port 0 for a free one\n")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a service manager's stop: clean exit
    print(f"kiosk: serving {predictor.model.path.name} ({predictor.kind} classifier) at {server.url}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        predictor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
