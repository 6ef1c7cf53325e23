"""Small models built in the tests, converted once per session and shared."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv/bn/relu/pool/linear, the shape of a mobile image classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(128, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels).flatten(1))


class TinyEncoder(nn.Module):
    """A 2-layer transformer encoder classifier: MatMul-heavy, token ids and a mask in."""

    def __init__(self, vocab: int = 64, dim: int = 128, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        return self.head(h.mean(1))


def _init(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():  # non-trivial BN statistics and weights
        nn.init.normal_(p, std=0.2) if p.dim() > 1 else nn.init.uniform_(p, -0.5, 0.5)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models train faster on one thread, most of all on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cnn() -> nn.Module:
    return _init(SmallCNN())


@pytest.fixture(scope="session")
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return TinyEncoder().eval()


def text_batch(n: int, seq: int = 16, vocab: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(n, seq)).astype(np.int64)
    mask = np.ones((n, seq), dtype=np.int64)
    mask[: n // 2, seq - 4:] = 0  # some padded rows
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def cnn_calib(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("calib") / "cnn_calib.npz"
    np.savez(path, pixels=np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32))
    return str(path)


@pytest.fixture(scope="session")
def cnn_artifacts(cnn: nn.Module, cnn_calib: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import edgekit

    out = tmp_path_factory.mktemp("cnn_out")
    x = torch.randn(2, 3, 16, 16)
    arts = edgekit.convert(cnn, (x,), targets=["onnx"], name="cnn", output_names=["logits"],
                           precisions=["fp32", "fp16", "int8-dynamic", "int8", "int4"],
                           calib=cnn_calib, out=out)
    return {a.precision.value: a for a in arts}


@pytest.fixture(scope="session")
def encoder_artifacts(encoder: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import edgekit

    tmp = tmp_path_factory.mktemp("enc_out")
    np.savez(tmp / "calib.npz", **text_batch(32, seed=2))
    ex = text_batch(2)
    arts = edgekit.convert(encoder, ex, targets=["onnx"], name="encoder", output_names=["logits"],
                           dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                         "attention_mask": {0: "batch", 1: "sequence"}},
                           precisions=["fp32", "int8-dynamic", "int8", "int4"],
                           calib=tmp / "calib.npz", out=tmp)
    return {a.precision.value: a for a in arts}


def install_runtime_plugin(tmp_path, monkeypatch: pytest.MonkeyPatch, module: str, source: str,
                           group: str = "edgekit.runtimes") -> None:
    """Install ``source`` as module ``module`` of a third-party distribution whose entry point in
    ``group`` names it, as a real plugin would; child processes find it."""
    import os
    import sys
    import textwrap

    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{module} = {module}\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
