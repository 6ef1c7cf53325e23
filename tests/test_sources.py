"""Model sources as a user passes them: a Hugging Face directory, a .pt2 file, a factory + weights.

Every model is built here from a config or a few lines of code; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import edgekit
from edgekit.cli import main as cli
from edgekit.errors import CalibrationError, SourceError
from edgekit.manifest import read_manifest
from tests.conftest import CALIB_TEXTS, VOCAB

# the tiny BERT classifier (hf_dir) and its vocabulary live in conftest.py


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path) -> nn.Module:
    """The original, loaded back the way a user would, to compare the artifacts with."""
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def hf_artifacts(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("hf_out")
    calib = tmp / "calib.txt"
    calib.write_text("\n".join(CALIB_TEXTS) + "\n", encoding="utf-8")
    arts = edgekit.convert(hf_dir, targets=["onnx"], precisions=["fp32", "int8"], calib=calib,
                           out=tmp / "out")
    return {a.precision.value: a for a in arts}


def test_tokenizer_built_here_knows_its_words(hf_dir: Path) -> None:
    """Guards the fixture: calibration text must become real token ids, not all [UNK]."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(hf_dir)("the movie was good")["input_ids"]
    assert ids[0] == VOCAB.index("[CLS]") and ids[-1] == VOCAB.index("[SEP]")
    assert ids[1:-1] == [VOCAB.index(w) for w in ("the", "movie", "was", "good")]


def test_hf_dir_loads_quietly_and_int8_asks_for_calibration(hf_dir: Path, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture) -> None:
    """Loading the directory (before any export) prints nothing: the library never prints."""
    with pytest.raises(CalibrationError) as info:
        edgekit.convert(hf_dir, targets=["onnx"], precisions=["int8"], out=tmp_path / "out")
    assert info.value.problem == "int8 on onnx needs calibration data"
    assert "a text file for a HF text model" in info.value.fix
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_hf_fp32_matches_transformers(hf_artifacts: dict) -> None:
    fp32 = hf_artifacts["fp32"]
    assert fp32.status == "ok" and fp32.path.name == "tiny-bert-fp32.onnx"
    v = fp32.verification
    assert v.passed and v.gated
    (logits,) = v.outputs
    assert logits.name == "logits"
    assert logits.max_abs_err < 1e-4 and logits.min_cosine > 0.9999
    assert logits.top1_agreement == 1.0
    assert v.samples == 2 + len(CALIB_TEXTS)  # the two example sentences plus the calibration text
    int8 = hf_artifacts["int8"]
    assert int8.status == "ok" and int8.verification.outputs[0].cosine > 0.99


def test_hf_manifest_records_task_labels_weights_and_dims(hf_dir: Path, hf_artifacts: dict) -> None:
    manifest = read_manifest(hf_artifacts["fp32"].path)
    assert manifest.task == "text-classification"
    assert manifest.preprocess["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    (weights,) = manifest.source["weights"]
    expected = hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()
    assert weights["file"] == "model.safetensors" and weights["sha256"] == expected
    assert manifest.source["kind"] == "huggingface"
    sig = manifest.signature
    assert sig.input_names == ["input_ids", "token_type_ids", "attention_mask"]
    for spec in sig.inputs:
        assert spec.dtype == "int64" and spec.shape == ("batch", "sequence"), spec
    assert sig.outputs[0].name == "logits" and sig.outputs[0].shape == ("batch", 3)


def test_hf_tokenizer_files_are_copied_beside_the_artifacts(hf_dir: Path, hf_artifacts: dict) -> None:
    out = hf_artifacts["fp32"].path.parent
    assets = out / "tiny-bert.assets"
    assert sorted(p.name for p in assets.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert (assets / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    for precision in ("fp32", "int8"):
        manifest = read_manifest(hf_artifacts[precision].path)
        assert manifest.preprocess["assets_dir"] == "tiny-bert.assets"
        listed = {f["path"]: f["sha256"] for f in manifest.files}
        digest = hashlib.sha256((assets / "tokenizer.json").read_bytes()).hexdigest()
        assert listed["tiny-bert.assets/tokenizer.json"] == digest


def test_hf_onnx_runs_other_batch_and_sequence_lengths(hf_artifacts: dict, hf_model: nn.Module,
                                                        hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    texts = ["fun", "the ending was boring, not very good and really not fun at all!", "a great film"]
    enc = AutoTokenizer.from_pretrained(hf_dir)(texts, padding=True, return_tensors="np")
    feed = {k: v.astype(np.int64) for k, v in enc.items()}
    example = read_manifest(hf_artifacts["fp32"].path).signature.input("input_ids").example_shape
    assert feed["input_ids"].shape[0] != example[0] and feed["input_ids"].shape[1] != example[1]
    with torch.inference_mode():
        want = hf_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    with edgekit.load(hf_artifacts["fp32"].path) as m:
        got = m.run(feed)["logits"]
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_cli_converts_hf_dir_with_json_report(hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(cli, ["convert", str(hf_dir), "--to", "onnx", "--precision", "fp32",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "edgekit.convert/1"
    (row,) = report["artifacts"]
    assert row["status"] == "ok" and row["precision"] == "fp32" and row["format"] == "onnx"
    assert Path(row["path"]) == out / "tiny-bert-fp32.onnx" and Path(row["path"]).is_file()
    assert row["verification"]["passed"] is True
    assert row["verification"]["outputs"][0]["top1_agreement"] == 1.0


# --------------------------------------------------------------------------------------------
# A torch.export program saved as .pt2
# --------------------------------------------------------------------------------------------


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features).softmax(-1) * 10.0


def test_pt2_program_converts_with_its_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Regressor().eval()
    x = torch.randn(4, 6)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("rows")},))
    pt2 = tmp_path / "regressor.pt2"
    torch.export.save(program, pt2)

    (art,) = edgekit.convert(pt2, targets=["onnx"], precisions=["fp32"], out=tmp_path / "out")
    assert art.status == "ok" and art.path.name == "regressor-fp32.onnx"
    (parity,) = art.verification.outputs
    assert art.verification.passed and parity.max_abs_err < 1e-5
    manifest = read_manifest(art.path)
    assert manifest.source["kind"] == "pt2"
    assert manifest.source["weights"][0]["sha256"] == hashlib.sha256(pt2.read_bytes()).hexdigest()
    (spec,) = manifest.signature.inputs
    assert spec.name == "features" and spec.shape == ("batch", 6)

    z = torch.randn(9, 6)  # another batch size than the program was exported with
    with torch.inference_mode():
        want = model(z).numpy()
    with edgekit.load(art.path) as m:
        np.testing.assert_allclose(m.run(features=z.numpy())["output"], want, atol=1e-5)


# --------------------------------------------------------------------------------------------
# package.module:factory with a weights file
# --------------------------------------------------------------------------------------------

FACTORY_MODULE = "edgekit_test_factory_nets"
FACTORY_CODE = textwrap.dedent("""
    import torch
    from torch import nn


    class Scorer(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(5, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))


    def make_scorer():
        return Scorer()
""")


@pytest.fixture(scope="module")
def factory_dir(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("factory")
    (path / f"{FACTORY_MODULE}.py").write_text(FACTORY_CODE)
    yield path
    sys.modules.pop(FACTORY_MODULE, None)


@pytest.fixture
def factory(factory_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The factory, importable as a user's package would be, and a trained-looking instance."""
    import importlib

    monkeypatch.syspath_prepend(str(factory_dir))
    module = importlib.import_module(FACTORY_MODULE)
    trained = module.make_scorer().eval()
    torch.manual_seed(7)
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_(0.0, 0.8)
        trained.head.bias.copy_(torch.tensor([4.0, -4.0]))  # distinctive: far from a fresh init
    return module, trained


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_factory_source_loads_the_given_weights(factory, tmp_path: Path, suffix: str) -> None:
    module, trained = factory
    weights = tmp_path / f"scorer{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(trained.state_dict(), str(weights))
    else:
        torch.save(trained.state_dict(), weights)

    example = torch.randn(3, 5)
    (art,) = edgekit.convert(f"{FACTORY_MODULE}:make_scorer", (example,), weights=weights,
                             targets=["onnx"], precisions=["fp32"], out=tmp_path / "out")
    assert art.status == "ok" and art.path.name == "make_scorer-fp32.onnx"
    assert art.verification.passed
    manifest = read_manifest(art.path)
    assert manifest.source["kind"] == "factory"
    assert manifest.source["location"] == f"{FACTORY_MODULE}:make_scorer"
    assert manifest.source["weights"] == [{"file": weights.name, "bytes": weights.stat().st_size,
                                           "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}]

    x = torch.randn(6, 5)
    with torch.inference_mode():
        want = trained(x).numpy()
        fresh = module.make_scorer().eval()(x).numpy()
    with edgekit.load(art.path) as m:
        got = m.run({"x": x.numpy()})["output"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - fresh).max() > 1.0  # the weights file was used, not the random init


def test_pickled_object_in_weights_is_refused_without_running_it(factory, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # unpickling this would create `marker`
            return (open, (str(marker), "w"))

    weights = tmp_path / "evil.pt"
    torch.save(Payload(), weights)
    with pytest.raises(SourceError) as info:
        edgekit.convert(f"{FACTORY_MODULE}:make_scorer", (torch.randn(2, 5),), weights=weights,
                        targets=["onnx"], precisions=["fp32"], out=tmp_path / "out")
    assert not marker.exists()
    err = info.value
    assert "evil.pt" in err.problem and "weights_only=True" in err.problem
    assert "safetensors" in err.fix and "state_dict()" in err.fix
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_weights_that_are_not_a_state_dict_or_do_not_fit_are_refused(factory, tmp_path: Path) -> None:
    as_list = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], as_list)
    with pytest.raises(SourceError, match=r"list\.pt holds a list, not a state dict"):
        edgekit.convert(f"{FACTORY_MODULE}:make_scorer", (torch.randn(2, 5),), weights=as_list,
                        precisions=["fp32"], out=tmp_path / "out")

    other = tmp_path / "other.pt"
    torch.save(nn.Linear(5, 3).state_dict(), other)
    with pytest.raises(SourceError) as info:
        edgekit.convert(f"{FACTORY_MODULE}:make_scorer", (torch.randn(2, 5),), weights=other,
                        precisions=["fp32"], out=tmp_path / "out")
    assert f"weights other.pt do not fit {FACTORY_MODULE}:make_scorer" in info.value.problem


def test_factory_that_cannot_be_imported_names_the_spec(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        edgekit.convert("edgekit_no_such_pkg.nets:make", (torch.randn(2, 5),), precisions=["fp32"],
                        out=tmp_path / "out")
    assert "cannot import edgekit_no_such_pkg.nets:make" in info.value.problem
    assert "PYTHONPATH" in info.value.fix
