"""What measuring over SSH costs: the same artifact benchmarked locally and ``--on`` a loopback
SSH device (this machine, the same threads), interleaved, and the push time of a ~90 MB artifact.

The device is Debian's sshd on 127.0.0.1 (started here, keys made here) and a venv holding only
``edgekit[onnxruntime]`` (tests/sshd_device.py builds and caches it). Both sides run the same
harness in a fresh isolated process, so the p50 ratio should be ~1: the timing happens on the
device, not across the link.

The local side runs in a new session (``setsid``), as sshd starts every remote command: Linux's
scheduler autogroups give each session its own share of the CPU, so on a busy machine a local
run inside the user's crowded session would get less CPU than a loopback "remote" run and the
ratio would measure the scheduler, not the link. Run: ``.venv/bin/python bench/remote_overhead.py`` (needs root or an
sshd that lets the current user in, and ``apt-get install -y openssh-server``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def mlp(path: Path, width: int, layers: int) -> Path:
    """``layers`` MatMul+Relu of width x width fp32 weights: 5 x 2120^2 is ~90 MB, a few ms per call."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        prev = f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width])], weights)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def local_bench(model: Path, **opts: object) -> object:
    """``edgekit.benchmark(isolated=True)`` here, from a process in its own session (see above)."""
    import subprocess

    from edgekit.harness import BenchResult

    code = ("import json, sys, edgekit; a = json.loads(sys.argv[1]); "
            "print(json.dumps(edgekit.benchmark(a.pop('path'), isolated=True, **a).to_dict()))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps({"path": str(model), **opts})],
                          capture_output=True, text=True, check=True, start_new_session=True)
    return BenchResult.from_dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=1120, help="timed model: 5 x 1120^2 fp32 (25 MB), a few ms")
    ap.add_argument("--push-width", type=int, default=2120, help="pushed model: 5 x 2120^2 fp32 (90 MB)")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "remote_overhead.json"))
    args = ap.parse_args()

    from edgekit.devices import Device, parse_target
    from edgekit.devices.push import bundle, push
    from edgekit.devices.setup import plan, setup
    from tests import sshd_device as sd

    with tempfile.TemporaryDirectory(prefix="edgekit-remote-bench-") as t:
        tmp = Path(t)
        os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
        model = mlp(tmp / "mlp.onnx", args.width, args.layers)
        big = mlp(tmp / "mlp-push.onnx", args.push_width, args.layers)
        size, timed = big.stat().st_size, model.stat().st_size
        with sd.sshd(tmp / "sshd") as srv:
            spec = parse_target(srv.url, name="loopback", identity=str(srv.user_key),
                                python=str(sd.device_venv()), workdir=str(tmp / "device"))
            dev = Device(spec, accept_new_host_key=True)
            setup(dev, plan(dev, "onnxruntime", wheel=sd.edgekit_wheel(), offline=True), timeout=600)
            b = bundle(big)
            first = push(dev, b)
            second = push(dev, b)
            local, remote, ratios = [], [], []
            opts = {"runs": args.runs, "warmup": 20, "threads": args.threads}
            for r in range(args.rounds):  # interleaved, the order alternating each round
                pair = {}
                for side in (("local", "remote") if r % 2 == 0 else ("remote", "local")):
                    if side == "local":
                        row = local_bench(model, **opts)
                    else:
                        row = dev.bench(model, **opts)
                        host = row.host
                    assert row.status == "ok", row.reason
                    pair[side] = row.latency.p50_ms
                local.append(pair["local"])
                remote.append(pair["remote"])
                ratios.append(pair["remote"] / pair["local"])
                print(f"round {r}: local p50 {pair['local']:.3f} ms, remote p50 {pair['remote']:.3f} ms", flush=True)
            dev.close()
    result = {
        "timed_mb": round(timed / 1e6, 1), "pushed_mb": round(size / 1e6, 1), "threads": args.threads,
        "rounds": args.rounds, "runs": args.runs,
        "local_p50_ms": round(statistics.median(local), 3), "remote_p50_ms": round(statistics.median(remote), 3),
        "p50_ratio_remote_over_local": round(statistics.median(ratios), 3),
        "ratio_of_medians": round(statistics.median(remote) / statistics.median(local), 3),
        "round_ratios": [round(r, 3) for r in ratios],
        "push_first_s": round(first.seconds, 2), "push_first_mb": round(first.sent_bytes / 1e6, 1),
        "push_second_s": round(second.seconds, 2), "push_second_bytes": second.sent_bytes,
        "cpu": host.get("cpu_model"), "cores": host.get("cores"), "measured": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
