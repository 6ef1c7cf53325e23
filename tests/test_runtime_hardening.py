"""Runtime hardening (issue 12, items 1-4 and 8): a loaded model is safe from many threads, shapes
are checked against the manifest for every runtime, a modified artifact is refused at load, a bare
OpenVINO IR keeps its precision hint, and non-tensor ONNX outputs come back as lists and dicts.

One tiny MLP is converted once to ONNX, OpenVINO IR and TFLite; every test copies what it changes.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import edgekit
from edgekit.cli import main as cli
from edgekit.errors import ArtifactError, InputError
from edgekit.manifest import read_manifest

FORMATS = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}
THREADS, CALLS = 8, 2000


@pytest.fixture(scope="module", autouse=True)
def probe_cache(tmp_path_factory: pytest.TempPathFactory):
    """LiteRT probe markers and the sha256 cache go to a fresh folder, not the user's."""
    old = os.environ.get("EDGEKIT_CACHE_DIR")
    os.environ["EDGEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("EDGEKIT_CACHE_DIR", None)
    else:
        os.environ["EDGEKIT_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.fixture(scope="module")
def arts(mlp: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mlp")
    converted = edgekit.convert(mlp, (torch.randn(2, 4),), targets=list(FORMATS), precisions=["fp32"], out=out,
                                name="mlp", input_names=["x"], output_names=["logits"])
    assert all(a.status == "ok" for a in converted), [(a.format, a.reason) for a in converted]
    return {a.format.value: a.path for a in converted}


def _copy(art: Path, dest: Path, *, manifest: bool = True) -> Path:
    """The artifact's files (and its manifest) copied into ``dest``; returns the model path there."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in read_manifest(art).files:
        shutil.copy2(art.parent / entry["path"], dest / entry["path"])
    if manifest:
        shutil.copy2(art.with_name(art.name + ".edgekit.json"), dest)
    return dest / art.name


# -- 1. many threads, one model --------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_backend_is_bit_identical_from_8_threads(fmt: str, arts: dict[str, Path]) -> None:
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((CALLS, 1, 4)).astype(np.float32)
    with edgekit.load(arts[fmt]) as m:
        want = np.stack([m.run(x=x)["logits"] for x in xs])
        _assert_same_from_threads(want, lambda t, k, i: m.run(x=xs[i])["logits"], timeout=120)


def _assert_same_from_threads(want: np.ndarray, call: Callable[[int, int, int], np.ndarray],
                              timeout: float) -> None:
    """THREADS threads each make CALLS calls ``call(thread, k, i)`` for input ``i`` (threads run
    different inputs at once); every answer must equal ``want[i]`` bit for bit."""
    got = np.zeros((THREADS, *want.shape), want.dtype)
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        start.wait()
        try:
            for k in range(CALLS):
                i = (k + t * CALLS // THREADS) % CALLS
                got[t, i] = call(t, k, i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=timeout)
    assert not errors, f"{len(errors)} threads failed, first: {errors[0]!r}"
    for t in range(THREADS):
        np.testing.assert_array_equal(got[t], want, err_msg=f"thread {t}")


@pytest.mark.slow
def test_a_gguf_model_is_bit_identical_from_8_threads(tmp_path: Path) -> None:
    """llama.cpp has one context per model: run() and logits() take turns."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from tests.conftest import tiny_llama_gguf

    path = tiny_llama_gguf(tmp_path, hidden=32, max_positions=64, precision="fp32")
    ids = np.random.default_rng(2).integers(3, 512, (CALLS, 1, 3)).astype(np.int64)
    with edgekit.load(path, threads=1) as m:
        want = np.stack([m.run(input_ids=x)["logits"] for x in ids])
        _assert_same_from_threads(  # run() and logits() interleaved: both take the model's turn
            want, lambda t, k, i: m.run(input_ids=ids[i])["logits"] if k % 2 else m.logits(ids[i][0])[None],
            timeout=300)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_read_only_inputs_run_on_every_runtime(fmt: str, arts: dict[str, Path]) -> None:
    """np.frombuffer, a memory map or Ray's object store hand out read-only arrays; OpenVINO refused
    to share them ("array is not writeable") and every matrix row on Ray failed. Then the copy made
    for it was freed before infer() read it: 4 KiB is past numpy's small-buffer cache, so the free
    put malloc's pointers into the first floats (the Ray-only 'diverged' fp32 OpenVINO rows, errors
    of 1e24-1e33). Several calls, with allocations between, as a worker's verification makes them."""
    rng = np.random.default_rng(2)
    for rows in (3, 256, 1024):
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        frozen = np.frombuffer(x.tobytes(), np.float32).reshape(rows, 4)
        strided = np.repeat(x, 2, axis=1)[:, ::2]  # writeable but not contiguous: copied too
        assert not frozen.flags.writeable and not strided.flags.c_contiguous
        with edgekit.load(arts[fmt]) as m:
            want = m.run(x=x)["logits"]
            for _ in range(3):
                np.testing.assert_array_equal(m.run(x=frozen)["logits"], want)
                np.testing.assert_array_equal(m.run(x=strided)["logits"], want)


# -- 2. shapes checked against the manifest for every runtime ---------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_wrong_fixed_size_is_refused_by_every_runtime(fmt: str, arts: dict[str, Path]) -> None:
    with edgekit.load(arts[fmt]) as m:
        assert m.signature.inputs[0].shape == ("batch", 4)
        with pytest.raises(InputError) as info:
            m.run(x=np.zeros((1, 16), np.float32))
    assert info.value.problem == ("input 'x' has size 16 on axis 1 (shape [1, 16]), the model expects "
                                  "x: float32[batch, 4]")
    assert read_manifest(arts[fmt]).signature.inputs[0].shape == ("batch", 4)


def test_a_dynamic_ir_is_checked_against_its_manifest(arts: dict[str, Path], tmp_path: Path) -> None:
    """An IR whose file leaves the feature axis dynamic (made elsewhere, or by an older edgekit)
    still refuses a wrong size: the manifest's fixed size wins over the file's '?'."""
    import openvino as ov

    model = ov.Core().read_model(str(arts["openvino"]))
    model.reshape({model.inputs[0]: ov.PartialShape([-1, -1])})
    path = tmp_path / arts["openvino"].name  # (saved elsewhere: the source .bin is memory-mapped)
    ov.save_model(model, str(path), compress_to_fp16=False)
    with edgekit.load(path) as bare:
        assert bare.signature.inputs[0].shape[1] == "?"
    shutil.copy2(arts["openvino"].with_name(arts["openvino"].name + ".edgekit.json"), tmp_path)
    with edgekit.load(path, verify=False) as m:
        assert m.signature.inputs[0].shape == ("batch", 4)
        with pytest.raises(InputError, match="has size 16 on axis 1"):
            m.run(x=np.zeros((1, 16), np.float32))
        assert m.run(x=np.ones((2, 4), np.float32))["logits"].shape == (2, 3)


# -- 3. a modified artifact is refused ---------------------------------------------------------------
def _negate_first_layer(data: bytearray, mlp: nn.Module) -> None:
    """Overwrite the first layer's float32 weights in a model file with -3x their values (same size)."""
    w = mlp[0].weight.detach().numpy().astype(np.float32)
    for block in (w, np.ascontiguousarray(w.T)):
        at = bytes(data).find(block.tobytes())
        if at >= 0:
            data[at:at + block.nbytes] = (-3 * block).tobytes()
            return
    raise AssertionError("the weights are not in the file as float32")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_modified_weights_are_an_artifact_error(fmt: str, arts: dict[str, Path], mlp: nn.Module,
                                                tmp_path: Path) -> None:
    path = _copy(arts[fmt], tmp_path)
    weights = path.with_suffix(".bin") if fmt == "openvino" else path
    data = bytearray(weights.read_bytes())
    _negate_first_layer(data, mlp)
    weights.write_bytes(bytes(data))
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    with pytest.raises(ArtifactError) as info:
        edgekit.load(path)
    assert info.value.problem == (f"{weights.name} does not match the sha256 recorded in its manifest: "
                                  "the file was modified")
    assert "verify=False" in info.value.fix
    with edgekit.load(path, verify=False) as m, edgekit.load(arts[fmt]) as good:
        assert np.abs(m.run(x=x)["logits"] - good.run(x=x)["logits"]).max() > 1e-2  # it would be wrong
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 1 and "does not match the sha256" in result.stderr
    assert "Traceback" not in result.output


def test_a_truncated_or_grown_file_fails_the_size_check(arts: dict[str, Path], tmp_path: Path) -> None:
    path = _copy(arts["onnx"], tmp_path)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ArtifactError) as info:
        edgekit.load(path)
    assert info.value.problem == (f"{path.name} is {size + 1:,} bytes, its manifest records {size:,}: "
                                  "the file was truncated, extended or replaced")


def test_sha256_is_computed_once_per_file_identity(arts: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekit.integrity as integrity

    path = _copy(arts["tflite"], tmp_path)
    hashed: list[str] = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    for _ in range(3):
        edgekit.load(path, probe=False).close()
    assert hashed == [path.name]  # the next two loads found (path, size, mtime) in the cache
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new identity: hashed again
    edgekit.load(path, probe=False).close()
    assert hashed == [path.name, path.name]
    edgekit.load(path, probe=False, verify=False).close()
    assert len(hashed) == 2


def test_check_integrity_is_public_and_checks_every_listed_file(arts: dict[str, Path], tmp_path: Path) -> None:
    from edgekit.runtime import check_integrity

    path = _copy(arts["openvino"], tmp_path)
    assert check_integrity(path, read_manifest(path)) == 2  # the .xml and the .bin
    path.with_suffix(".bin").unlink()
    with pytest.raises(ArtifactError, match=r"mlp-fp32\.bin is listed in the manifest of mlp-fp32\.xml but is missing"):
        check_integrity(path, read_manifest(path))


# -- 4. a bare IR keeps the precision it was verified with ---------------------------------------
def test_a_bare_ir_carries_its_precision_hint(arts: dict[str, Path], tmp_path: Path) -> None:
    import openvino as ov

    bare = _copy(arts["openvino"], tmp_path, manifest=False)
    model = ov.Core().read_model(str(bare))
    assert model.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str) == "f32"
    with edgekit.load(bare) as m:
        info = m.describe()
    assert info["precision_hint_source"] == "the IR's rt_info (runtime_options)"
    assert info["precision_hint"] == "f32"
    with edgekit.load(bare, precision_hint="bf16") as m:  # an explicit option still wins
        assert m.describe()["precision_hint_source"] == "precision_hint option"


# -- 8. sequence and map outputs (scikit-learn style ONNX classifiers) --------------------------------
@pytest.fixture(scope="module")
def zipmap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear classifier whose second output is a sequence of {class id: probability} maps,
    the way skl2onnx writes scikit-learn classifiers (ZipMap)."""
    import onnx
    from onnx import TensorProto, helper

    w = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]], np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["probs"], axis=1),
             helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
             helper.make_node("ZipMap", ["probs"], ["probabilities"], domain="ai.onnx.ml",
                              classlabels_int64s=[10, 20, 30])]
    graph = helper.make_graph(
        nodes, "zipmap", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_value_info("probabilities", helper.make_sequence_type_proto(
             helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))))],
        [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("zipmap") / "clf.onnx"
    onnx.save(model, str(path))
    return path


def test_sequence_of_maps_output_comes_back_as_a_list_of_dicts(zipmap: Path, tmp_path: Path) -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    scores = x @ np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]], np.float32)
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    with edgekit.load(zipmap) as m:
        out = m.run(X=x)
        spec = {s.name: s for s in m.signature.outputs}["probabilities"]
        assert spec.dtype == "seq(map(int64,tensor(float)))"
        m.benchmark({"X": x}, warmup=1, runs=3, min_time=0)
    np.testing.assert_array_equal(out["label"], [0, 1])
    assert isinstance(out["probabilities"], list) and len(out["probabilities"]) == 2
    for row, want in zip(out["probabilities"], probs):
        assert sorted(row) == [10, 20, 30]
        np.testing.assert_allclose([row[10], row[20], row[30]], want, rtol=1e-5)
    np.savez(tmp_path / "in.npz", X=x)
    result = CliRunner().invoke(cli, ["run", str(zipmap), "--input", str(tmp_path / "in.npz"), "--json"])
    assert result.exit_code == 0, result.output
    import json

    outputs = json.loads(result.stdout)["outputs"]
    assert outputs["probabilities"]["type"] == "list" and outputs["probabilities"]["length"] == 2
    result = CliRunner().invoke(cli, ["run", str(zipmap), "--input", str(tmp_path / "in.npz"),
                                      "--output", str(tmp_path / "out.npz")])
    assert result.exit_code == 2 and "cannot be saved to an .npz" in result.stderr, result.output
