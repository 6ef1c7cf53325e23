"""The kiosk sample (samples/kiosk/app.py) as a person uses it: in a real headless browser.

The server runs in a child process whose ``PYTHONPATH`` starts with stub ``torch`` and
``transformers`` packages that refuse to import, so every test here also proves the kiosk runs on
the runtime alone. The browser is Debian's ``chromium`` driven through the DevTools protocol on a
pipe (tests/chromium.py): no driver binary, no browser download, no extra package.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from tests.chromium import CHROMIUM, TIMEOUT, Chromium
from tests.conftest import CALIB_TEXTS

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "samples" / "kiosk" / "app.py"
READY = "document.readyState === 'complete' && document.body.dataset.ready"  # the page asked /api/info
# a package that refuses to import, and notes which file tried (third-party code may try and recover)
STUB = """\
import os, traceback
frames = [f.filename for f in traceback.extract_stack()[:-1] if not f.filename.startswith("<")]
with open(os.environ["KIOSK_IMPORT_LOG"], "a") as log:
    log.write("{name} " + (frames[-1] if frames else "?") + "\\n")
raise ImportError("kiosk must not import {name}")
"""


# --------------------------------------------------------------------------------------------
# The artifacts: the tiny BERT of test_sources (with its tokenizer) and a tiny digits classifier
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_artifact(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_sources' tiny BERT and tokenizer, with weights large enough that different texts get
    different labels (its fresh 0.02-scale init scores every text ~1/3 neutral)."""
    import torch
    from transformers import BertForSequenceClassification

    tmp = tmp_path_factory.mktemp("kiosk_text")
    source = shutil.copytree(request.getfixturevalue("hf_dir"), tmp / "tiny-bert")
    model = BertForSequenceClassification.from_pretrained(source).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    model.save_pretrained(source)
    (art,) = edgekit.convert(source, targets=["onnx"], precisions=["fp32"], out=tmp / "out")
    return art.path


@pytest.fixture(scope="module")
def image_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nearest-class-mean classifier of scikit-learn's 8x8 digits (a linear layer, no training)
    with the built-in digits model's image preprocessing, so a PNG of a digit is read as the CNN reads it."""
    import torch
    from sklearn.datasets import load_digits

    from edgekit.sources.builtin import DIGITS_IMAGE

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32).reshape(len(digits.images), 64)
    means = np.stack([x[digits.target == d].mean(0) for d in range(10)])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():  # argmax of -|x - mean|^2 / 2 = x.mean - |mean|^2 / 2
        net[1].weight.copy_(torch.from_numpy(means))
        net[1].bias.copy_(torch.from_numpy(-0.5 * (means**2).sum(1)))
    example = torch.from_numpy(x[:2].reshape(2, 1, 8, 8))
    (art,) = edgekit.convert(net.eval(), (example,), targets=["onnx"], precisions=["fp32"], name="tiny-digits",
                             input_names=["pixels"], output_names=["logits"],
                             preprocess={"id2label": {str(i): f"digit {i}" for i in range(10)},
                                         "image": DIGITS_IMAGE},
                             out=tmp_path_factory.mktemp("kiosk_image"))
    return art.path


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Digits 0, 3 and 7 of scikit-learn's set as 64x64 grey PNG files (white ink on black)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path_factory.mktemp("digit_pngs")
    files = {}
    for d in (0, 3, 7):
        i = int(np.flatnonzero(digits.target == d)[-1])
        pixels = np.clip(digits.images[i] * 16, 0, 255).astype(np.uint8)
        files[d] = folder / f"digit-{d}.png"
        Image.fromarray(pixels).resize((64, 64), Image.Resampling.NEAREST).save(files[d])
    return files


# --------------------------------------------------------------------------------------------
# The kiosk server, in a child process that cannot import torch
# --------------------------------------------------------------------------------------------


class Kiosk:
    """A running ``samples/kiosk/app.py``: its process, URL and port."""

    def __init__(self, artifact: Path, stubs: Path) -> None:
        env = no_torch_env(stubs)
        self.log = stubs.parent / f"kiosk-{artifact.stem}.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen([sys.executable, str(APP), str(artifact), "--port", "0", "--threads", "1"],
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, text=True)
        line = self._first_line()
        match = re.search(r"at (http://127\.0\.0\.1:(\d+)/)$", line.strip())
        assert match, f"unexpected start line {line!r}"
        self.url, self.port = match[1], int(match[2])

    def _first_line(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            pytest.fail(f"the kiosk did not start:\n{self.log.read_text()}")
        return line

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if resp.getheader("Content-Type") == "application/json" else data
        finally:
            conn.close()

    def predict(self, payload: Any) -> tuple[int, Any]:
        return self.request("POST", "/api/predict", json.dumps(payload).encode())

    def stop(self) -> int:
        """Stop it as a service manager does (SIGTERM); its exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


def no_torch_env(stubs: Path) -> dict[str, str]:
    """The environment of a kiosk whose Python finds the refusing stubs before any real torch."""
    path = os.pathsep.join(p for p in (str(stubs), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "KIOSK_IMPORT_LOG": str(stubs.parent / "imports.log")}


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of ``torch`` and ``transformers`` packages that raise on import."""
    root = tmp_path_factory.mktemp("kiosk_env") / "no-torch"
    for name in ("torch", "transformers"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(STUB.format(name=name))
    return root


@pytest.fixture(scope="module")
def text_kiosk(text_artifact: Path, stubs: Path) -> Iterator[Kiosk]:
    kiosk = Kiosk(text_artifact, stubs)
    yield kiosk
    kiosk.stop()


@pytest.fixture(scope="module")
def image_kiosk(image_artifact: Path, stubs: Path) -> Iterator[Kiosk]:
    kiosk = Kiosk(image_artifact, stubs)
    yield kiosk
    kiosk.stop()


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium (/usr/bin/chromium): apt-get install chromium; .ci/run installs it")
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


def submit_and_read(browser: Chromium, action: Any) -> dict[str, str]:
    """Do ``action`` (type+click, choose a file), wait for the new answer, read what the page shows."""
    before = browser.js("document.getElementById('result').dataset.seq || '0'")
    action()
    browser.wait_for(f"(r => r.dataset.state === 'done' && r.dataset.seq !== {before!r})"
                     "(document.getElementById('result'))")
    error = browser.js("document.getElementById('error').hidden ? '' : document.getElementById('error').textContent")
    assert not error, f"the page shows an error: {error}"
    return {key: browser.text(f"#{key}") for key in ("label", "score", "latency")}


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_typed_text_shows_the_runtimes_label_score_and_latency(text_kiosk: Kiosk, text_artifact: Path,
                                                               browser: Chromium) -> None:
    with edgekit.load(text_artifact) as m:
        want = {t: m.classify([t], top_k=3)[0] for t in CALIB_TEXTS}
    # two texts the model labels apart, so a page that shows a stale or fixed answer fails
    first = CALIB_TEXTS[0]
    second = next(t for t in CALIB_TEXTS if want[t]["label"] != want[first]["label"])

    browser.open(text_kiosk.url, READY)
    assert "tiny-bert-fp32.onnx" in browser.text("#model")
    assert browser.js("document.getElementById('text-form').hidden") is False
    assert browser.js("document.getElementById('image-form').hidden") is True
    for text in (first, second):
        def type_and_submit(text: str = text) -> None:
            browser.js("document.getElementById('text').value = ''")
            browser.type("#text", text)
            assert browser.js("document.getElementById('text').value") == text
            browser.click("#submit")

        shown = submit_and_read(browser, type_and_submit)
        assert shown["label"] == want[text]["label"], text
        assert float(shown["score"]) == pytest.approx(want[text]["score"], abs=1e-4)
        latency = re.fullmatch(r"latency (\d+\.\d+) ms \(preprocess (\d+\.\d+) ms \+ inference (\d+\.\d+) ms; "
                               r"round trip (\d+\.\d+) ms\)", shown["latency"])
        assert latency, shown["latency"]
        total, pre, infer, _ = map(float, latency.groups())
        assert infer > 0 and total == pytest.approx(pre + infer, abs=0.02)
    assert len(browser.js("[...document.querySelectorAll('#top li')].map(li => li.textContent)")) == 3


def test_empty_text_is_refused_on_the_page_and_by_the_server(text_kiosk: Kiosk, browser: Chromium) -> None:
    browser.open(text_kiosk.url, READY)
    browser.js("document.getElementById('text').value = '   '")
    browser.click("#submit")
    assert "the text is empty" in browser.wait_for(
        "!document.getElementById('error').hidden && document.getElementById('error').textContent")
    status, answer = text_kiosk.predict({"text": "  \n "})
    assert status == 400 and answer["error"] == "the text is empty" and answer["fix"]


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(text_kiosk: Kiosk) -> None:
    cases = [
        ({"image": base64.b64encode(b"not an image at all").decode()}, 400, "this model classifies texts"),
        ({"text": 42}, 400, "text must be a string"),
        ({"text": "a", "image": "b"}, 400, "exactly one of text or image"),
        ({"text": "x" * 6000}, 413, "more than 5,000"),
        ({"text": "fine", "top_k": 0}, 400, "top_k must be an integer"),
        (["the movie"], 400, "must be a JSON object"),
    ]
    for payload, status, problem in cases:
        got, answer = text_kiosk.predict(payload)
        assert (got, problem in answer["error"]) == (status, True), (payload, answer)
        assert answer["fix"]
    for body in (b"{not json", b"[" * 100_000):
        status, answer = text_kiosk.request("POST", "/api/predict", body)
        assert status == 400 and answer["error"].startswith("the body is not JSON")
    status, answer = text_kiosk.request("POST", "/api/predict", b"x" * (11 * 1024 * 1024))
    assert status == 413 and "more than" in answer["error"]
    status, answer = text_kiosk.request("GET", "/healthz", headers={"Host": "evil.example:80"})
    assert status == 403 and "is not this kiosk" in answer["error"]
    status, answer = text_kiosk.request("GET", "/../app.py")
    assert status == 404
    assert text_kiosk.request("GET", "/healthz") == (200, {"status": "ok", "artifact": "tiny-bert-fp32.onnx"})
    status, answer = text_kiosk.predict({"text": "the movie was good"})
    assert status == 200 and answer["label"] in ("negative", "neutral", "positive")
    assert set(answer["timing"]) >= {"preprocess_ms", "inference_ms", "total_ms"}
    assert text_kiosk.proc.poll() is None


def test_chosen_and_dropped_images_show_the_runtimes_label(image_kiosk: Kiosk, image_artifact: Path,
                                                            digit_pngs: dict[int, Path], browser: Chromium) -> None:
    with edgekit.load(image_artifact) as m:
        want = {d: m.classify(str(png), top_k=3)[0] for d, png in digit_pngs.items()}
    assert [want[d]["label"] for d in sorted(want)] == ["digit 0", "digit 3", "digit 7"]  # guards the fixture

    browser.open(image_kiosk.url, READY)
    assert browser.js("document.getElementById('text-form').hidden") is True
    assert browser.js("document.getElementById('image-form').hidden") is False
    for digit, how in ((3, browser.choose_file), (7, browser.drop_file), (0, browser.choose_file)):
        shown = submit_and_read(browser, lambda digit=digit, how=how: how(
            "#file" if how == browser.choose_file else "#drop", digit_pngs[digit]))
        assert shown["label"] == want[digit]["label"], how.__name__
        assert float(shown["score"]) == pytest.approx(want[digit]["score"], abs=1e-4)
        assert re.match(r"latency \d+\.\d+ ms \(preprocess", shown["latency"])
    assert browser.js("document.getElementById('preview').naturalWidth") == 64  # the preview shows the file


def test_files_that_are_not_images_are_refused(image_kiosk: Kiosk, digit_pngs: dict[int, Path],
                                               browser: Chromium, tmp_path: Path) -> None:
    browser.open(image_kiosk.url, READY)
    note = tmp_path / "note.txt"
    note.write_text("not a picture")
    browser.choose_file("#file", note)
    assert "note.txt is not an image" in browser.wait_for(
        "!document.getElementById('error').hidden && document.getElementById('error').textContent")

    png = digit_pngs[3].read_bytes()
    cases = [
        (base64.b64encode(b"GIF89a but not really").decode(), 400, "not an image Pillow can read"),
        (base64.b64encode(png[: len(png) // 2]).decode(), 400, "could not be decoded"),
        ("data:image/png;base64,%%%", 400, "not valid base64"),
        ("", 400, "non-empty base64 string"),
    ]
    for image, status, problem in cases:
        got, answer = image_kiosk.predict({"image": image})
        assert (got, problem in answer["error"]) == (status, True), answer
    got, answer = image_kiosk.predict({"text": "a digit"})
    assert got == 400 and answer["error"].startswith("this model classifies images")
    got, answer = image_kiosk.predict({"image": "data:image/png;base64," + base64.b64encode(png).decode()})
    assert got == 200 and answer["label"] == "digit 3"


def test_kiosk_never_imports_torch(text_kiosk: Kiosk, image_kiosk: Kiosk, stubs: Path) -> None:
    """The stubs shadow torch in the kiosk's environment, and no edgekit or kiosk file tried them."""
    env = {**no_torch_env(stubs), "KIOSK_IMPORT_LOG": os.devnull}
    for name in ("torch", "transformers"):
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True,
                               text=True, timeout=TIMEOUT)
        assert f"ImportError: kiosk must not import {name}" in probe.stderr
    assert text_kiosk.predict({"text": "a great film"})[0] == 200
    assert image_kiosk.predict({"image": base64.b64encode(_png(np.zeros((8, 8), np.uint8))).decode()})[0] == 200
    log = stubs.parent / "imports.log"
    tried = log.read_text().splitlines() if log.exists() else []
    ours = [line for line in tried if str(ROOT) in line and f"{os.sep}site-packages{os.sep}" not in line]
    assert ours == [], f"edgekit or the kiosk tried to import: {ours}"


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on ``port``, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                if len(raw) == 4:  # stored as a little-endian 32-bit word
                    found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    found.append(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1]
                                                                             for i in range(0, 16, 4))))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the socket table of Linux")
def test_server_listens_on_loopback_only(text_kiosk: Kiosk) -> None:
    assert _listening_addresses(text_kiosk.port) == ["127.0.0.1"]


def test_a_busy_port_is_reported_and_sigterm_stops_cleanly(text_artifact: Path, stubs: Path) -> None:
    kiosk = Kiosk(text_artifact, stubs)
    try:
        run = subprocess.run([sys.executable, str(APP), str(text_artifact), "--port", str(kiosk.port)],
                             env=no_torch_env(stubs), capture_output=True, text=True, timeout=TIMEOUT)
        assert run.returncode == 1
        assert f"cannot listen on 127.0.0.1:{kiosk.port}" in run.stderr and "--port 0" in run.stderr
    finally:
        assert kiosk.stop() == 0


def test_no_artifact_says_how_to_make_one() -> None:
    run = subprocess.run([sys.executable, str(APP)], capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 2
    assert "edgekit convert --out kiosk-model" in run.stderr
    assert "samples/kiosk/app.py kiosk-model/digits-cnn-fp32.onnx" in run.stderr


def test_an_artifact_without_its_manifest_is_refused_at_start(image_artifact: Path, tmp_path: Path) -> None:
    bare = tmp_path / image_artifact.name  # the model file alone: its task and preprocessing are unknown
    bare.write_bytes(image_artifact.read_bytes())
    run = subprocess.run([sys.executable, str(APP), str(bare), "--port", "0"], capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert run.returncode == 1 and run.stdout == ""
    assert f"kiosk: cannot serve {bare}: tiny-digits-fp32.onnx has no edgekit manifest" in run.stderr
    assert "fix: convert the model with `edgekit convert`" in run.stderr


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()

