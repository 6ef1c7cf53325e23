"""Knowledge distillation on toy tasks: the loss falls, hidden states match through a projection,
early stopping keeps the best epoch, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ConfigError
from edgekit.optimize.distill import derive_layer_map, distill

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((384, 16)).astype(np.float32)
    y = (x @ rng.standard_normal((16, 4))).argmax(1)
    return x, y


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    x, y = _toy()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return net.eval()


def _student(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def _agreement(a: nn.Module, b: nn.Module, x: np.ndarray) -> float:
    with torch.no_grad():
        return float((a(torch.from_numpy(x)).argmax(1) == b(torch.from_numpy(x)).argmax(1)).float().mean())


def test_distillation_lowers_the_students_loss_on_a_toy_task(teacher: nn.Module) -> None:
    x, y = _toy()
    student = _student()
    before = _agreement(teacher, student, x)
    res = distill(teacher, student, {"x": x}, labels=y, temperature=2.0, alpha=0.7, epochs=6,
                  batch_size=16, grad_accum=2, lr=1e-2, patience=None)
    assert res.student is student and not student.training
    assert res.final_loss < 0.3 * res.initial_loss  # soft-target KL to the teacher, same 256 samples
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert all("hard" in h and "soft" in h for h in res.history)  # labels given: both terms
    after = _agreement(teacher, student, x)
    assert after > 0.85 and after > before + 0.3


def test_early_stopping_keeps_the_best_epoch(teacher: nn.Module) -> None:
    x, _ = _toy()
    snapshots: list[dict] = []

    def worse_every_epoch(model: nn.Module) -> dict:  # a metric that only gets worse after epoch 1
        snapshots.append(copy.deepcopy(model.state_dict()))
        return {"value": 1.0 - 0.1 * len(snapshots), "higher_is_better": True}

    student = _student()
    res = distill(teacher, student, {"x": x}, epochs=10, batch_size=32, lr=1e-2, eval=worse_every_epoch,
                  patience=2)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1
    for name, value in student.state_dict().items():  # the weights of epoch 1 were put back
        assert torch.equal(value, snapshots[0][name])


def test_an_interrupted_run_resumes_from_its_checkpoint(teacher: nn.Module, tmp_path) -> None:
    x, y = _toy()
    kwargs = dict(labels=y, epochs=3, batch_size=32, lr=5e-3, patience=None, checkpoint_steps=4)
    straight = distill(teacher, _student(), {"x": x}, checkpoint_dir=tmp_path / "a", **kwargs).student

    calls = 0

    def interrupt(task: str, done: int, total: int | None) -> None:
        nonlocal calls
        calls += 1
        if calls == 18:  # epoch 2 of 3, after the mid-epoch checkpoint at its 4th step
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(teacher, _student(), {"x": x}, checkpoint_dir=tmp_path / "b", progress=interrupt, **kwargs)
    assert (tmp_path / "b" / "distill.pt").is_file()
    res = distill(teacher, _student(), {"x": x}, checkpoint_dir=tmp_path / "b", **kwargs)
    assert res.resumed_from == {"epoch": 1, "batch": 4}
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    for name, value in res.student.state_dict().items():  # the same weights as the run never stopped
        assert torch.allclose(value, straight.state_dict()[name], atol=1e-6), name

    changed = distill(teacher, _student(), {"x": x}, checkpoint_dir=tmp_path / "b", **{**kwargs, "lr": 1e-3})
    assert changed.resumed_from is None  # other settings: the checkpoint does not apply, start over


def _bert(layers: int, hidden: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(layers)
    cfg = BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def test_hidden_state_matching_on_a_tiny_bert_derives_the_layer_map_and_projects(tmp_path) -> None:
    from edgekit.sources.module import from_module

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, size=(32, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::3, 9:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    teacher = from_module(_bert(4, 32), {k: v[:2] for k, v in feeds.items()}, output_keys=["logits"])
    student = from_module(_bert(2, 16), {k: v[:2] for k, v in feeds.items()}, output_keys=["logits"])
    assert derive_layer_map(teacher, student) == {"bert.encoder.layer.0": "bert.encoder.layer.1",
                                                  "bert.encoder.layer.1": "bert.encoder.layer.3"}
    res = distill(teacher, student, feeds, hidden_weight=1.0, epochs=4, batch_size=8, lr=3e-3, patience=None)
    assert res.projected == ["bert.encoder.layer.0", "bert.encoder.layer.1"]  # widths 16 -> 32
    assert all(h["hidden"] > 0 for h in res.history)
    assert res.history[-1]["hidden"] < res.history[0]["hidden"]
    assert res.final_loss < res.initial_loss

    with pytest.raises(ConfigError, match="did you mean 'bert.encoder.layer.1'"):
        distill(teacher, student, feeds, hidden_weight=1.0, epochs=1,
                layer_map={"bert.encoder.layer.1": "bert.encoder.layer.11"})
