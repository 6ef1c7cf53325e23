"""Pruning: structured cuts keep every coupled shape consistent, export to ONNX and run; dead units
go without changing the outputs; unstructured pruning zeroes weights for good; bad input is named."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit.errors import CalibrationError, ConfigError
from edgekit.optimize.prune import prune, prune_source

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB = 100


class ResCNN(nn.Module):
    """Stem, a residual block (two BNs write the same channel space), a head conv, flatten, MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 24, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(24)
        self.fc1 = nn.Linear(24 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.stem(pixels)))
        h = h + torch.relu(self.bn2(self.conv2(h)))
        h = nn.functional.max_pool2d(torch.relu(self.bn3(self.conv3(h))), 2)
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


def _res_cnn() -> ResCNN:
    torch.manual_seed(0)
    net = ResCNN()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _kill_residual_channels(net: ResCNN, dead: list[int]) -> None:
    """Make ``dead`` channels of the residual space contribute nothing, and weigh nothing."""
    with torch.no_grad():
        for conv in (net.stem, net.conv2):
            conv.weight[dead] = 0
            conv.bias[dead] = 0
        for bn in (net.bn1, net.bn2):
            bn.weight[dead] = 0
            bn.bias[dead] = 0
        net.conv2.weight[:, dead] = 0
        net.conv3.weight[:, dead] = 0


def _bert(layers: int = 2) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, num_labels=3, max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _text(n: int = 2, seq: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, VOCAB, size=(n, seq)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _logits(model: nn.Module, feed: dict[str, np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- CNN: channels through residual adds and batch norm ---

def test_cnn_pruned_by_half_is_smaller_exports_to_onnx_and_runs(tmp_path) -> None:
    net = _res_cnn()
    x = torch.randn(2, 3, 8, 8)
    res = prune(net, sparsity=0.5, example_inputs=(x,))
    small = res.module
    assert _n_params(small) == res.params_after < 0.5 * res.params_before
    assert _n_params(net) == res.params_before  # the caller's model is untouched
    # the residual space is one group: stem, bn1, conv2, bn2 and conv3's inputs agree
    c = small.stem.out_channels
    assert c == 8 and small.bn1.num_features == small.conv2.in_channels == small.conv2.out_channels == c
    assert small.bn2.num_features == small.conv3.in_channels == c
    assert small.fc1.in_features == small.conv3.out_channels * 16  # flatten follows the channels
    assert small.fc2.out_features == 5  # the model's output is never cut
    arts = edgekit.convert(small, (x,), targets=["onnx"], precisions=["fp32"], out=tmp_path, name="cnn")
    assert arts[0].status == "ok"
    with edgekit.load(arts[0].path) as m:
        got = m.run({"pixels": x.numpy()})
    with torch.no_grad():
        want = small(x).numpy()
    np.testing.assert_allclose(next(iter(got.values())), want, atol=1e-4)


def test_dead_residual_channels_are_the_ones_cut_and_outputs_do_not_move() -> None:
    net = _res_cnn()
    dead = [1, 4, 6, 9, 12, 15]
    _kill_residual_channels(net, dead)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
    res = prune(net, sparsity=6 / 16, targets=["channels"], scope="layer", example_inputs=(x,),
                exclude=["bn3"])  # leaves conv3's own output channels alone
    small = res.module
    assert small.stem.out_channels == 10 and small.conv3.out_channels == 24
    with torch.no_grad():
        np.testing.assert_allclose(small(x).numpy(), want.numpy(), atol=1e-5)
    kept = [i for i in range(16) if i not in dead]
    torch.testing.assert_close(small.bn2.running_mean, net.bn2.running_mean[kept])


def test_nothing_removed_is_the_same_model() -> None:
    net = _res_cnn()
    x = torch.randn(2, 3, 8, 8)
    res = prune(net, sparsity=0.0, example_inputs=(x,))
    assert res.params_after == res.params_before
    with torch.no_grad():
        torch.testing.assert_close(res.module(x), net(x))


def test_taylor_cuts_what_does_not_reach_the_loss_even_when_its_weights_are_large() -> None:
    net = _res_cnn()
    with torch.no_grad():
        net.fc1.weight[:8] *= 10  # large weights...
        net.fc2.weight[:, :8] = 0  # ...that reach nothing
    x = torch.randn(2, 3, 8, 8)
    data = [{"pixels": np.random.default_rng(i).standard_normal((8, 3, 8, 8)).astype(np.float32)}
            for i in range(2)]
    by_taylor = prune(net, sparsity=0.25, targets=["ffn"], importance="taylor", data=data, example_inputs=(x,))
    by_magnitude = prune(net, sparsity=0.25, targets=["ffn"], example_inputs=(x,))
    with torch.no_grad():
        torch.testing.assert_close(by_taylor.module(x), net(x))  # the 8 dead units went
        assert not torch.allclose(by_magnitude.module(x), net(x))  # magnitude kept them
    assert by_taylor.module.fc1.out_features == 24


def test_excluded_layer_keeps_every_channel() -> None:
    net = _res_cnn()
    res = prune(net, sparsity=0.5, targets=["channels"], example_inputs=(torch.randn(1, 3, 8, 8),),
                exclude=["conv2"])
    assert res.module.conv2.out_channels == 16 and res.module.conv2.in_channels == 16
    assert res.module.conv3.out_channels == 12
    assert "conv2" not in {r.name for r in res.layers}


# --- transformers: heads, FFN units, layers, config ---

def test_tiny_bert_pruned_by_half_exports_to_onnx_and_runs(tmp_path) -> None:
    from edgekit.sources import resolve_source

    model = _bert()
    feed = _text()
    source = resolve_source(model, feed, output_names=["logits"])
    pruned, res = prune_source(source, sparsity=0.5)
    assert pruned.input_names == source.input_names and pruned.output_names == ["logits"]
    assert res.params_after < res.params_before and res.scope == "layer"
    att = pruned.module.inner.bert.encoder.layer[0].attention.self
    assert att.query.out_features == att.key.out_features == att.value.out_features == 16
    assert att.num_attention_heads == 2 and att.all_head_size == 16
    assert pruned.module.inner.bert.encoder.layer[1].intermediate.dense.out_features == 32
    assert pruned.module.inner.config.intermediate_size == 32
    assert {r.name for r in res.layers} >= {"bert.encoder.layer.0.attention", "bert.encoder.layer.1.ffn"}
    assert any("head size" in n for n in res.notes)  # BERT's config cannot hold fewer heads
    arts = edgekit.convert(pruned, targets=["onnx"], precisions=["fp32"], out=tmp_path, name="bert")
    with edgekit.load(arts[0].path) as m:
        got = m.run(_text(seed=3))["logits"]
    np.testing.assert_allclose(got, pruned.reference(_text(seed=3))["logits"], atol=1e-4)
    record = json.loads(json.dumps(res.to_dict()))  # plain data for the manifest
    assert record["layers"][0]["removed"] == 2 and record["params_after"] == res.params_after


def test_bert_heads_with_zero_output_projection_go_without_changing_outputs() -> None:
    model = _bert()
    head = 8  # head_dim 8: head 1 of 4 in every layer
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            s = layer.attention.self
            for proj in (s.query, s.key, s.value):
                proj.weight[head:2 * head] = 0
                proj.bias[head:2 * head] = 0
            layer.attention.output.dense.weight[:, head:2 * head] = 0
    feed = _text(3)
    res = prune(model, sparsity=0.25, targets=["heads"], example_inputs=feed)
    torch.testing.assert_close(_logits(res.module, feed), _logits(model, feed), atol=1e-5, rtol=1e-5)
    kept = res.module.bert.encoder.layer[0].attention.self.value.weight
    torch.testing.assert_close(kept, torch.cat([model.bert.encoder.layer[0].attention.self.value.weight[:8],
                                                model.bert.encoder.layer[0].attention.self.value.weight[16:]]))


def test_bert_nothing_removed_and_taylor_global_layers() -> None:
    model = _bert(layers=4)
    feed = _text()
    same = prune(model, sparsity=0.0, targets=["heads", "ffn", "layers"], example_inputs=feed)
    torch.testing.assert_close(_logits(same.module, feed), _logits(model, feed))
    res = prune(model, sparsity=0.5, targets=["layers", "ffn"], importance="taylor", scope="global",
                data=[_text(4, seed=i) | {"labels": np.array([0, 1, 2, 0])} for i in range(2)],
                example_inputs=feed)
    assert len(res.module.bert.encoder.layer) == 2 and res.module.config.num_hidden_layers == 2
    sizes = [b.intermediate.dense.out_features for b in res.module.bert.encoder.layer]
    assert sum(sizes) == 64  # global: half of the remaining layers' units, split as scores decide
    assert _logits(res.module, feed).shape == (2, 3)


def test_llama_gqa_cuts_whole_kv_groups_and_the_config_reloads(tmp_path) -> None:
    from transformers import LlamaForCausalLM

    model = _llama()
    with torch.no_grad():  # KV group 1 = KV head 1 and query heads 2, 3 (head_dim 8), in every layer
        for layer in model.model.layers:
            a = layer.self_attn
            a.q_proj.weight[16:32] = 0
            a.k_proj.weight[8:16] = 0
            a.v_proj.weight[8:16] = 0
            a.o_proj.weight[:, 16:32] = 0
    feed = _text()
    res = prune(model, sparsity=0.5, targets=["heads"], example_inputs=feed)
    cfg = res.module.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 8)
    assert res.layers[0].unit == "kv-groups" and res.layers[0].after == 1
    torch.testing.assert_close(_logits(res.module, feed), _logits(model, feed), atol=1e-5, rtol=1e-5)
    res.module.save_pretrained(tmp_path)  # a consistent config: the pruned model reloads as itself
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(again, feed), _logits(res.module, feed))


def test_llama_ffn_and_layers_keep_the_config_exact(tmp_path) -> None:
    from transformers import LlamaForCausalLM

    model = _llama()
    feed = _text()
    res = prune(model, sparsity=0.5, targets=["ffn", "layers"], example_inputs=feed)
    assert res.module.config.intermediate_size == 32 and res.module.config.num_hidden_layers == 1
    assert res.module.model.layers[0].self_attn.layer_idx == 0
    res.module.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(again, feed), _logits(res.module, feed))


def test_gpt2_fused_qkv_head_cut_matches_a_zeroed_head() -> None:
    model = _gpt2()
    with torch.no_grad():  # head 3 (columns 24:32 of each of q, k, v; rows 24:32 of c_proj)
        for block in model.transformer.h:
            for part in range(3):
                block.attn.c_attn.weight[:, part * 32 + 24: part * 32 + 32] = 0
                block.attn.c_attn.bias[part * 32 + 24: part * 32 + 32] = 0
            block.attn.c_proj.weight[24:32] = 0
    feed = _text()
    res = prune(model, sparsity=0.25, targets=["heads", "ffn"], example_inputs=feed)
    attn = res.module.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (32, 72) and attn.num_heads == 3 and attn.split_size == 24
    assert res.module.config.n_inner == 96
    only_heads = prune(model, sparsity=0.25, targets=["heads"], example_inputs=feed)
    torch.testing.assert_close(_logits(only_heads.module, feed), _logits(model, feed), atol=1e-5, rtol=1e-5)


# --- unstructured ---

def test_unstructured_global_zeroes_half_for_good() -> None:
    net = _res_cnn()
    res = prune(net, sparsity=0.5, method="unstructured")
    weights = [m.weight for m in res.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert abs(zeros / total - 0.5) < 0.01
    assert res.params_after == res.params_before and res.nonzero_after < 0.55 * res.nonzero_before
    assert set(res.module.state_dict()) == set(net.state_dict())  # no masks or hooks left behind
    per_layer = prune(net, sparsity=0.5, method="unstructured", scope="layer")
    assert all(abs(r.detail["sparsity"] - 0.5) < 0.01 for r in per_layer.layers)


def test_unstructured_never_prunes_embeddings_or_the_tied_head() -> None:
    from transformers import GPT2LMHeadModel

    model = _gpt2()
    assert isinstance(model, GPT2LMHeadModel)
    res = prune(model, sparsity=0.5, method="unstructured")
    torch.testing.assert_close(res.module.transformer.wte.weight, model.transformer.wte.weight)
    assert int((res.module.transformer.h[0].mlp.c_fc.weight == 0).sum()) > 0


# --- bad input ---

@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, "0.5", True, float("nan")])
def test_sparsity_outside_0_1_is_a_config_error(sparsity) -> None:
    with pytest.raises(ConfigError, match="sparsity") as e:
        prune(_res_cnn(), sparsity=sparsity, example_inputs=(torch.randn(1, 3, 8, 8),))
    assert e.value.fix


def test_unknown_exclude_name_suggests_close_ones() -> None:
    with pytest.raises(ConfigError, match="'conv22'") as e:
        prune(_res_cnn(), sparsity=0.5, example_inputs=(torch.randn(1, 3, 8, 8),), exclude=["conv22"])
    assert "conv2" in e.value.fix


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"targets": ["filters"]}, "unknown pruning target 'filters'"),
    ({"method": "lottery"}, "unknown pruning method"),
    ({"importance": "random"}, "unknown importance"),
    ({"scope": "model"}, "unknown pruning scope"),
    ({"targets": ["heads"]}, "nothing to prune"),
    ({"importance": "taylor"}, "needs data"),
])
def test_bad_options_are_config_errors_that_say_what_to_use(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        prune(_res_cnn(), sparsity=0.5, example_inputs=(torch.randn(1, 3, 8, 8),), **kwargs)
    assert e.value.fix


def test_data_missing_an_input_is_a_calibration_error() -> None:
    from edgekit.sources import resolve_source

    source = resolve_source(_bert(), _text(), output_names=["logits"])
    with pytest.raises(CalibrationError, match="attention_mask"):
        prune_source(source, sparsity=0.5, importance="taylor", data=[{"input_ids": _text()["input_ids"]}])


def test_uniformly_pruned_llama_converts_to_gguf_and_matches(tmp_path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests import test_gguf as g
    from tests.conftest import bpe_tokenizer, save_random_lm

    tok = tmp_path / "tok"
    tok.mkdir()
    bpe_tokenizer(tok)
    cfg = LlamaConfig(vocab_size=g.VOCAB, hidden_size=g.HIDDEN, intermediate_size=2 * g.HIDDEN,
                      num_hidden_layers=g.LAYERS, num_attention_heads=g.HEADS, num_key_value_heads=g.KV_HEADS,
                      max_position_embeddings=g.CTX, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    original = save_random_lm(LlamaForCausalLM(cfg), tmp_path / "llama", tok)
    model = LlamaForCausalLM.from_pretrained(original).eval()
    ids = np.random.default_rng(0).integers(3, g.VOCAB, (2, 12))
    res = prune(model, sparsity=0.5, targets=["heads", "ffn"], example_inputs={"input_ids": ids})
    assert not res.notes and res.module.config.head_dim == g.HIDDEN // g.HEADS  # no longer hidden / heads
    folder = tmp_path / "pruned"
    res.module.save_pretrained(folder)
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (art,) = edgekit.convert(str(folder), targets=["gguf"], precisions=["fp32"], out=tmp_path / "out")
    assert art.status == "ok" and art.verification.passed
    assert art.verification.outputs[0].max_abs_err < 1e-3
