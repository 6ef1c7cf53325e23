"""Debian's headless chromium driven through the DevTools protocol on a pipe, for browser tests.

``--remote-debugging-pipe`` needs no driver binary (chromedriver), no websocket client and no
browser download (Playwright's cannot work here): chromium reads commands from fd 3 and writes
replies to fd 4, each a JSON message ended by a NUL byte. Install it with ``apt-get install chromium``.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1000,900"]
TIMEOUT = 60.0


class Chromium:
    """Headless chromium with a fresh profile in ``profile``; ``call`` sends one DevTools command
    and returns its result; ``open``, ``type``, ``click``, ``choose_file``, ``drop_file`` act as a user."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def as_fds_3_and_4() -> None:  # in the child, before exec
            a, b = os.dup(to_browser), os.dup(from_browser)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = profile / "chromium.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                 "about:blank"],
                pass_fds=(3, 4), preexec_fn=as_fds_3_and_4, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._id = 0
        self._target = ""
        self.session: str | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if not browser and self.session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:  # anything else is an event nobody subscribed to
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._in, 1 << 16) if ready else b""
            if not chunk:
                raise RuntimeError(f"chromium stopped answering:\n{self.log.read_text()[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str, ready: str = "document.readyState === 'complete'") -> None:
        """A new tab on ``url`` (the previous one closed), attached, once ``ready`` holds there."""
        if self.session:
            self.call("Target.closeTarget", {"targetId": self._target}, browser=True)
        target = self._target = self.call("Target.createTarget", {"url": url}, browser=True)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 browser=True)["sessionId"]
        self.wait_for(ready)

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"the page never satisfied: {expression}")

    def type(self, selector: str, text: str) -> None:
        """Focus the element and press a key for each character, as a keyboard would."""
        self.js(f"document.querySelector({selector!r}).focus()")
        for ch in text:
            self.call("Input.dispatchKeyEvent", {"type": "keyDown", "text": ch, "key": ch})
            self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": ch})

    def click(self, selector: str) -> None:
        """A left mouse click at the middle of the element."""
        x, y = self.js(f"""(() => {{ const el = document.querySelector({selector!r});
            el.scrollIntoView({{block: "center"}}); const r = el.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def choose_file(self, selector: str, path: Path) -> None:
        """What the file dialog does: set the input's file, which fires its change event."""
        handle = self.call("Runtime.evaluate", {"expression": f"document.querySelector({selector!r})"})
        self.call("DOM.setFileInputFiles", {"files": [str(path)], "objectId": handle["result"]["objectId"]})

    def drop_file(self, selector: str, path: Path) -> None:
        """Drag a file from outside the page and drop it on the element, as a file manager would."""
        x, y = self.js(f"""(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        data = {"items": [], "files": [str(path)], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            self.call("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})

    def text(self, selector: str) -> str:
        return self.js(f"document.querySelector({selector!r}).textContent")

    def close(self) -> None:
        try:
            self.call("Browser.close", browser=True)
        except RuntimeError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)
