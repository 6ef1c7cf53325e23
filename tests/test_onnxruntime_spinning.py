"""The onnxruntime ``spinning`` load option (``-O onnxruntime.spinning=false`` for ``edgekit serve``).

ORT's intra-op threads spin after each run by default; on a few shared cores (a server's event loop
beside the model, other processes) that spinning takes the CPU the others need. The option reaches
the session, leaves the answers alone, and a value that is not a boolean is refused with the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.errors import ConfigError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def matmul(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("ort") / "matmul.onnx"
    onnx.save(model, path)
    return path


def test_spinning_off_reaches_the_session_and_keeps_the_answers(matmul: Path) -> None:
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    with edgekit.load(matmul, threads=2) as default, edgekit.load(matmul, threads=2, spinning="false") as quiet:
        options = quiet._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        np.testing.assert_array_equal(quiet.run({"x": x})["y"], default.run({"x": x})["y"])
    with edgekit.load(matmul, spinning=True) as spinning:
        options = spinning._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_a_spinning_value_that_is_not_a_boolean_is_refused(matmul: Path) -> None:
    with pytest.raises(ConfigError, match="spinning") as e:
        edgekit.load(matmul, spinning="sometimes")
    assert e.value.fix and "true or false" in e.value.fix


def test_spinning_run_spins_during_a_run_only_and_keeps_the_answers(matmul: Path) -> None:
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    with edgekit.load(matmul, threads=2) as default, edgekit.load(matmul, threads=2, spinning="run") as run:
        options = run._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        np.testing.assert_array_equal(run.run({"x": x})["y"], default.run({"x": x})["y"])
