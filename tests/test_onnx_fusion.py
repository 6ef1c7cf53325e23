"""ONNX fp32 with fused attention (``-O fp32_fusion``): with ``ort`` a real BERT encoder fuses to
ONNX Runtime's com.microsoft Attention / SkipLayerNormalization / BiasGelu, with ``onnx-attention``
it is exported at opset 23 with the standard ONNX Attention op; both still match PyTorch on a padded
batch. Graphs without attention and ``fp32_fusion=none`` keep the exporter's graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgekit
from edgekit.errors import ConfigError
from edgekit.manifest import read_manifest
from tests.conftest import TEXTS, bert_tokenizer

pytestmark = pytest.mark.slow


def _convert(hf_dir: Path, out: Path, fusion: str) -> Path:
    (art,) = edgekit.convert(str(hf_dir), targets=["onnx"], precisions=["fp32"], seq_len=16, out=out,
                             options={"onnx": {"fp32_fusion": fusion}})
    assert art.status == "ok" and art.verification.passed, art.reason
    return art.path


@pytest.fixture(scope="module")
def bert_fp32(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT classifier converted to fp32 with ``-O fp32_fusion=ort``."""
    return _convert(hf_dir, tmp_path_factory.mktemp("fused"), "ort")


@pytest.fixture(scope="module")
def bert_attention(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT classifier converted to fp32 with ``-O fp32_fusion=onnx-attention``."""
    return _convert(hf_dir, tmp_path_factory.mktemp("attention"), "onnx-attention")


def _ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _padded_batch() -> dict[str, np.ndarray]:
    # texts of different lengths padded to one width: the attention mask's zeros must still mask
    enc = bert_tokenizer()(TEXTS, padding=True, return_tensors="np")
    assert (enc["attention_mask"] == 0).any()
    return {k: v.astype(np.int64) for k, v in enc.items()}


def test_bert_fp32_fuses_attention_and_records_it(bert_fp32: Path) -> None:
    ops = _ops(bert_fp32)
    assert ops.get("Attention") == 2 and ops.get("SkipLayerNormalization") == 4 and ops.get("BiasGelu") == 2
    assert "Softmax" not in ops and "IsNaN" not in ops  # the exporter's decomposition is gone
    conv = read_manifest(bert_fp32).conversion
    assert "ort_fusions" in conv["route"]
    assert conv["fusion"]["applied"] and conv["fusion"]["fusions"]["attention"] == 2
    assert conv["ops"]["Attention"] == 2


def test_bert_fp32_at_opset_23_has_the_onnx_attention_op(bert_attention: Path) -> None:
    model = onnx.load(str(bert_attention))
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(attention) == 2 and all(n.domain in ("", "ai.onnx") for n in attention)  # the standard op
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {23}
    assert "IsNaN" not in _ops(bert_attention)
    conv = read_manifest(bert_attention).conversion
    assert "opset 23" in conv["route"] and conv["fusion"] == {"applied": True, "opset": 23, "attention_ops": 2}


@pytest.mark.parametrize("which", ["bert_fp32", "bert_attention"])
def test_fused_matches_pytorch_on_padded_batch(hf_dir: Path, which: str, request: pytest.FixtureRequest) -> None:
    from transformers import AutoModelForSequenceClassification

    path = request.getfixturevalue(which)
    feed = _padded_batch()
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    with torch.inference_mode():
        ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    with edgekit.load(path, threads=1) as m:
        got = m.run({s.name: feed[s.name] for s in m.signature.inputs})["logits"]
    assert np.abs(got - ref).max() < 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("fusion, reason", [("ort", "no attention block fused"), (None, "-O fp32_fusion=none"),
                                            ("onnx-attention", "no scaled_dot_product_attention in the model")])
def test_otherwise_the_exporters_graph_is_kept(tmp_path: Path, fusion: str | None, reason: str) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    (art,) = edgekit.convert(net, np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32),
                             targets=["onnx"], precisions=["fp32"], out=tmp_path,
                             options={"onnx": {"fp32_fusion": fusion}} if fusion else None)
    assert art.status == "ok"
    conv = read_manifest(art.path).conversion
    assert conv["fusion"]["applied"] is False and conv["fusion"]["reason"] == reason
    assert "ort_fusions" not in conv["route"] and "Attention" not in conv["ops"]


def test_unknown_fusion_is_a_config_error(tmp_path: Path) -> None:
    net = torch.nn.Linear(4, 2).eval()
    with pytest.raises(ConfigError, match="fp32_fusion"):
        edgekit.convert(net, np.zeros((1, 4), np.float32), targets=["onnx"], precisions=["fp32"], out=tmp_path,
                        options={"onnx": {"fp32_fusion": "maybe"}})
