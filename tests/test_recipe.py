"""Recipes, evaluators and accuracy gates: a recipe round-trips and lands in every manifest it
produced, bad recipes name the key, a gate stops a pipeline that loses too much (or steps back to a
milder setting), and each evaluator computes what it says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgekit.errors import ConfigError, GateError, RecipeError
from edgekit.optimize.recipe import (
    DistillStage,
    EvalSettings,
    PruneStage,
    QuantizeStage,
    Recipe,
    dump_recipe,
    load_recipe,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.features(pixels).flatten(1))))


def small_cnn() -> nn.Module:
    """The factory the CLI test names as tests.test_recipe:small_cnn."""
    return DigitsCNN()


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """A user metric named as tests.test_recipe:top1 in a recipe."""
    return float((outputs.argmax(-1) == labels).mean())


ORIGINAL_LOGITS: list[np.ndarray] = []  # set by the test that names the metric below


def closeness(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Minus the largest logit error against the original's: a metric every quantization loses on."""
    return -float(np.abs(outputs - ORIGINAL_LOGITS[0]).max())


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(6):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    tmp = tmp_path_factory.mktemp("digits")
    np.savez(tmp / "eval.npz", pixels=x[test], labels=y[test])
    np.savez(tmp / "calib.npz", pixels=x[train[:256]])
    np.savez(tmp / "train.npz", pixels=x[train], labels=y[train])
    np.savez(tmp / "example.npz", pixels=x[test[:2]])
    torch.save(net.state_dict(), tmp / "weights.pt")
    return {"net": net, "x": x[test[:2]], "dir": tmp}


def _run(recipe: str, digits: dict, out, **kw):
    from edgekit.optimize.pipeline import run_recipe

    return run_recipe(recipe, digits["net"], (torch.from_numpy(digits["x"]),), input_names=["pixels"],
                      output_names=["logits"], name="digits", out=out, eval_data=digits["dir"] / "eval.npz",
                      calib=digits["dir"] / "calib.npz", **kw)


FULL = """\
schema: edgekit.recipe/1
name: digits-small
targets: [onnx, ir]
eval: {metric: accuracy, max_drop: 0.02, on_fail: step-back}
prune: {sparsity: 0.5, targets: [channels], exclude: [fc2], step_back: [0.3, 0.1]}
distill: {epochs: 2, lr: 1e-3, temperature: 3, layer_map: {features.2: features.2}, hidden_weight: 0.5}
quantize: {precisions: [fp32, f16, int8], options: {onnx: {opset: 18}}, max_drop: 0.03}
"""


def test_a_recipe_round_trips_through_yaml_json_and_files(tmp_path) -> None:
    r = load_recipe(FULL)
    assert r.targets == ("onnx", "openvino") and r.quantize.precisions == ("fp32", "fp16", "int8")
    assert r.distill.lr == 1e-3 and r.distill.temperature == 3.0  # YAML's 1e-3 string read as a number
    assert load_recipe(dump_recipe(r)) == r
    assert load_recipe(dump_recipe(r, fmt="json")) == r
    (tmp_path / "r.json").write_text(dump_recipe(r, fmt="json"))
    (tmp_path / "r.yaml").write_text(dump_recipe(r))
    assert load_recipe(tmp_path / "r.json") == load_recipe(str(tmp_path / "r.yaml")) == r
    built = Recipe(name="digits-small", targets=("onnx", "openvino"),
                   eval=EvalSettings(metric="accuracy", max_drop=0.02, on_fail="step-back"),
                   prune=PruneStage(sparsity=0.5, targets=["channels"], exclude=["fc2"], step_back=[0.3, 0.1]),
                   distill=DistillStage(epochs=2, lr=1e-3, temperature=3, layer_map={"features.2": "features.2"},
                                        hidden_weight=0.5),
                   quantize=QuantizeStage(precisions=["fp32", "fp16", "int8"], options={"onnx": {"opset": 18}},
                                          max_drop=0.03))
    assert built == r
    assert r.max_drop("quantize") == 0.03 and r.max_drop("distill") == 0.02


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "samples" / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_sample_recipes_are_valid(path: Path) -> None:
    r = load_recipe(path)
    assert load_recipe(dump_recipe(r)) == r and r.name


HEAD = "schema: edgekit.recipe/1\n"


@pytest.mark.parametrize("text, key, says", [
    (HEAD + "prune: {sparsty: 0.3}", "prune.sparsty", "did you mean 'sparsity'"),
    (HEAD + "prun: {sparsity: 0.3}", "prun", "did you mean 'prune'"),
    (HEAD + "prune: {sparsity: 1.5}", "prune.sparsity", "between 0 and 1"),
    (HEAD + "prune: {sparsity: -0.1}", "prune.sparsity", "between 0 and 1"),
    (HEAD + "prune: {method: structured}", "prune.sparsity", "required"),
    (HEAD + "prune: {sparsity: 0.3, targets: [chanels]}", "prune.targets[0]", "did you mean 'channels'"),
    ("schema: edgekit.recipe/2\n", "schema", "edgekit.recipe/1"),
    ("prune: {sparsity: 0.3}\n", "schema", "schema: edgekit.recipe/1"),
    (HEAD + "prune:\n  sparsity: 0.3\n bad: [1\n", "", "line 4, column 2"),
    (HEAD + "targets: [onnx, tflit]", "targets[1]", "did you mean 'tflite'"),
    (HEAD + "quantize: {precisions: [fp32, int3]}", "quantize.precisions[1]", "int8"),
    (HEAD + "distill: {epochs: 1.5}", "distill.epochs", "whole number"),
    (HEAD + "distill: {lr: fast}", "distill.lr", "a number"),
    (HEAD + "eval: {metric: acuracy}", "eval.metric", "did you mean 'accuracy'"),
    (HEAD + "eval: {on_fail: retry}", "eval.on_fail", "step-back"),
    ("- just\n- a list\n", "", "mapping"),
])
def test_bad_recipes_name_the_key(text: str, key: str, says: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(text)
    assert isinstance(info.value, ConfigError) and info.value.key == key
    assert says in str(info.value)
    if key:
        assert f"recipe key {key}:" in str(info.value)


def test_a_recipe_file_error_names_the_file(tmp_path) -> None:
    (tmp_path / "r.yaml").write_text(HEAD + "prune: {sparsity: 2}\n")
    with pytest.raises(RecipeError, match=r"^r\.yaml: recipe key prune\.sparsity"):
        load_recipe(tmp_path / "r.yaml")
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_layer_the_model_does_not_have_is_a_recipe_error(digits: dict, tmp_path) -> None:
    with pytest.raises(RecipeError, match="did you mean 'fc2'") as info:
        _run(HEAD + "prune: {sparsity: 0.3, exclude: [fc9]}", digits, tmp_path)
    assert info.value.key == "prune.exclude[0]"
    with pytest.raises(RecipeError, match="teacher layer") as info:
        _run(HEAD + "distill: {epochs: 1, layer_map: {fc1: fc_1}}", digits, tmp_path)
    assert info.value.key == "distill.layer_map[0]"


def test_a_gate_stops_the_pipeline_with_a_report(digits: dict, tmp_path) -> None:
    recipe = HEAD + "eval: {max_drop: 0.01}\nprune: {sparsity: 0.9, targets: [channels]}\n"
    with pytest.raises(GateError) as info:
        _run(recipe, digits, tmp_path)
    err, report = info.value, info.value.report
    stages = [s["stage"] for s in report["stages"]]
    assert stages == ["original", "prune"] and report["status"] == "stopped"
    failed = report["stages"][-1]
    assert failed["passed"] is False and failed["max_drop"] == 0.01 and failed["drop"] > 0.01
    assert failed["drop"] == pytest.approx(report["stages"][0]["metric"]["value"] - failed["metric"]["value"])
    assert f"{failed['drop']:.4g}" in err.problem and "accuracy" in err.problem and "prune" in err.problem
    assert "0.01" in err.problem and "step-back" in err.fix
    assert not list(tmp_path.glob("*.onnx"))  # nothing converted after a failed stage


def test_step_back_tries_a_milder_setting_and_every_manifest_stores_the_recipe(digits: dict, tmp_path) -> None:
    recipe = load_recipe(HEAD + "eval: {max_drop: 0.02, on_fail: step-back}\n"
                         "prune: {sparsity: 0.9, targets: [channels], step_back: [0.02]}\n"
                         "quantize: {precisions: [fp32, int8-dynamic], max_drop: 0.05}\n")
    res = _run(recipe, digits, tmp_path)
    rows = [(s.stage, s.setting, s.passed) for s in res.report.stages]
    assert rows == [("original", {}, None), ("prune", {"sparsity": 0.9}, False),
                    ("prune", {"sparsity": 0.02}, True), ("onnx fp32", {"precision": "fp32"}, True),
                    ("onnx int8-dynamic", {"precision": "int8-dynamic"}, True)]
    assert [a.status for a in res.artifacts] == ["ok", "ok"]
    for art in res.artifacts:
        manifest = json.loads(art.manifest_path.read_text())
        assert load_recipe(manifest["recipe"]["recipe"]) == recipe
        assert [s["stage"] for s in manifest["recipe"]["stages"]] == ["original", "prune", "prune"]
        gate = manifest["recipe"]["gate"]
        assert gate["stage"] == f"onnx {art.precision.value}" and gate["passed"] is True
        assert gate["max_drop"] == 0.05 and gate["metric"]["name"] == "accuracy"


def test_a_failed_artifact_steps_back_to_a_milder_precision(digits: dict, tmp_path) -> None:
    with torch.inference_mode():
        ORIGINAL_LOGITS[:] = [digits["net"](torch.from_numpy(np.load(digits["dir"] / "eval.npz")["pixels"])).numpy()]
    recipe = (HEAD + "eval: {metric: 'tests.test_recipe:closeness', on_fail: step-back}\n"
              "quantize: {precisions: [fp32, int8], max_drop: 0.05}\n")
    res = _run(recipe, digits, tmp_path)
    rows = [(s.stage, s.passed, s.attempt) for s in res.report.stages]
    assert rows[:3] == [("original", None, 1), ("onnx fp32", True, 1), ("onnx int8", False, 1)]
    assert rows[-1][1] is True and rows[-1][0] in ("onnx int8-dynamic", "onnx fp16") and rows[-1][2] >= 2
    assert res.report.stages[-1].details["stepped_back_from"] in ("int8", "int8-dynamic")
    int8 = next(a for a in res.artifacts if a.precision.value == "int8")
    assert int8.status == "failed" and "dropped" in int8.reason and int8.path.is_file()  # kept, marked
    assert res.artifacts[-1].status == "ok"
    manifest = json.loads(int8.manifest_path.read_text())
    assert manifest["recipe"]["gate"]["passed"] is False


def test_distillation_wins_back_what_pruning_lost_and_the_gate_judges_the_student(digits: dict, tmp_path) -> None:
    train = digits["dir"] / "train.npz"  # labelled: soft targets plus the hard-label loss
    recipe = (HEAD + "eval: {max_drop: 0.02}\nprune: {sparsity: 0.6, targets: [channels]}\n"
              f"distill: {{data: '{train}', epochs: 4, lr: 3e-3, batch_size: 32, patience: 2}}\n"
              "quantize: {precisions: [fp32]}\n")
    res = _run(recipe, digits, tmp_path)
    original, pruned, distilled, fp32 = res.report.stages
    assert pruned.passed is None  # followed by distillation: measured, not gated
    assert pruned.drop > 0.02 and distilled.drop <= 0.02 and distilled.passed is True
    assert distilled.details["labels"] and distilled.details["data"] == "train.npz"
    assert distilled.details["final_loss"] < distilled.details["initial_loss"]
    assert fp32.metric["value"] == pytest.approx(distilled.metric["value"])
    assert not (tmp_path / ".edgekit-checkpoints").exists() or not any((tmp_path / ".edgekit-checkpoints").iterdir())


def test_cli_gate_failure_exits_non_zero_with_the_report(digits: dict, tmp_path) -> None:
    from edgekit.cli import main

    (tmp_path / "r.yaml").write_text(HEAD + "eval: {metric: 'tests.test_recipe:top1', max_drop: 0.01}\n"
                                     "prune: {sparsity: 0.9, targets: [channels]}\n")
    d = digits["dir"]
    args = ["convert", "tests.test_recipe:small_cnn", "--weights", str(d / "weights.pt"),
            "--example", str(d / "example.npz"), "--eval", str(d / "eval.npz"), "--recipe",
            str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 4, result.output
    assert "stage prune (sparsity 0.9): tests.test_recipe:top1 dropped" in result.stderr
    assert "allowed 0.01" in result.stderr and "FAILED" in result.stdout
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 4
    payload = json.loads(result.stdout)
    assert payload["artifacts"] == [] and payload["recipe"]["status"] == "stopped"
    assert payload["recipe"]["stages"][-1]["metric"]["name"] == "tests.test_recipe:top1"


# -- evaluators ----------------------------------------------------------------------------------

def test_accuracy_and_user_metrics_agree_and_model_taking_metrics_run_the_model(digits: dict) -> None:
    from edgekit.calib import load_eval
    from edgekit.evaluate import evaluate, get_evaluator
    from edgekit.sources.module import from_module

    src = from_module(digits["net"], (torch.from_numpy(digits["x"]),), input_names=["pixels"])
    data = load_eval(digits["dir"] / "eval.npz", src)
    acc = evaluate(src, data, "accuracy", original=src)
    assert acc["name"] == "accuracy" and acc["delta"] == 0.0 and acc["samples"] == 397 and acc["value"] > 0.85
    assert evaluate(src, data, "tests.test_recipe:top1")["value"] == acc["value"]

    seen = []

    def runs_model(model) -> float:
        seen.append(model.run({"pixels": digits["x"]})["output"].shape)
        return 0.5

    assert evaluate(src, data, runs_model)["value"] == 0.5 and seen == [(2, 10)]
    with pytest.raises(ConfigError, match="did you mean 'perplexity'"):
        get_evaluator("perplexty")


def test_perplexity_matches_the_perplexity_module_and_cosine_sees_a_change() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekit.calib import CalibrationSet
    from edgekit.evaluate import EvalData, evaluate
    from edgekit.perplexity import score, torch_logits
    from edgekit.sources.module import from_module

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)).eval()
    ids = np.random.default_rng(0).integers(0, 50, size=(3, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # a padded row: only its 6 real tokens count
    feeds = {"input_ids": ids, "attention_mask": mask}
    src = from_module(lm, feeds, output_keys=["logits"])
    data = EvalData(CalibrationSet(feeds, "tokens"))
    ppl = evaluate(src, data, "perplexity")
    nll = []
    for row, m in zip(ids, mask):
        real = row[m.astype(bool)]
        s = score(torch_logits(lm), real, window=len(real))
        nll.append(np.log(s.perplexity) * s.tokens)
    assert ppl["tokens"] == 9 + 5 + 9 and ppl["higher_is_better"] is False
    assert ppl["value"] == pytest.approx(np.exp(sum(nll) / 23), rel=1e-5)

    same = evaluate(src, data, "cosine", original=src)
    assert same["value"] == pytest.approx(1.0) and same["delta"] == pytest.approx(0.0)
    import copy

    other = copy.deepcopy(lm)
    with torch.no_grad():
        other.lm_head.weight.add_(0.002 * torch.randn_like(other.lm_head.weight))
    changed = evaluate(from_module(other, feeds, output_keys=["logits"]), data, "cosine", original=src)
    assert 0.9 < changed["value"] < 0.9999
