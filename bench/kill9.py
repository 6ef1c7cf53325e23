"""kill -9 in the middle of ``edgekit convert``: what is left in ``--out``, and what the next run does.

Each trial starts ``edgekit convert`` (a small CNN as a .pt2 file -> ONNX and OpenVINO, fp32 and
int8-dynamic) and sends SIGKILL at a random moment while its staging folder exists (``--anytime``:
anywhere within one full conversion's duration, start-up included). It counts
the ``.edgekit-staging-*`` folders left behind and checks that every model file in ``--out`` is
whole (its manifest's sha256 matches). Then a normal conversion runs into the same ``--out``: it
must remove the leftovers, say so ("warning: removed ..."), and leave none.

    python bench/kill9.py --trials 8 --json bench/results/kill9.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EDGEKIT = [sys.executable, "-m", "edgekit"]
STAGING = ".edgekit-staging-"


def make_source(folder: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    path = folder / "cnn.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 3, 32, 32),)), path)
    return path


def convert_cmd(source: Path, out: Path) -> list[str]:
    return [*EDGEKIT, "convert", str(source), "--to", "onnx,openvino", "--precision", "fp32,int8-dynamic",
            "--out", str(out)]


def whole_artifacts(out: Path) -> tuple[int, int]:
    """(model files whose manifest lists a matching sha256, model files that do not)."""
    good = bad = 0
    for manifest in out.glob("*.edgekit.json"):
        data = json.loads(manifest.read_text())
        for entry in data.get("files", []):
            f = out / entry["path"]
            if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != entry["sha256"]:
                bad += 1
            else:
                good += 1
    models = [p for p in out.iterdir() if p.suffix in (".onnx", ".xml", ".bin")]
    unlisted = [p for p in models if not any(
        p.name == e["path"] for m in out.glob("*.edgekit.json") for e in json.loads(m.read_text())["files"])]
    return good, bad + len(unlisted)


def trial(source: Path, out: Path, full_s: float, rng: random.Random, staged: bool) -> dict:
    """One conversion killed at a random moment: anywhere in its run, or (``staged``) while its
    staging folder exists, i.e. while it is exporting, quantizing, verifying or publishing."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(convert_cmd(source, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if staged:
        while proc.poll() is None and not (out.exists() and any(out.glob(STAGING + "*"))):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, max(0.5, 0.8 * (full_s - (time.perf_counter() - t0)))))
    else:
        time.sleep(rng.uniform(0.3, full_s))
    delay = time.perf_counter() - t0
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in out.glob(STAGING + "*")) if out.exists() else []
    good, bad = whole_artifacts(out) if out.exists() else (0, 0)
    t0 = time.perf_counter()
    rerun = subprocess.run(convert_cmd(source, out), capture_output=True, text=True, timeout=900)
    return {"kill_after_s": round(delay, 2), "finished_before_kill": finished_first,
            "staging_left_after_kill": len(left), "whole_files_after_kill": good, "broken_files_after_kill": bad,
            "next_run_exit": rerun.returncode, "next_run_s": round(time.perf_counter() - t0, 1),
            "next_run_said_removed": "warning: removed" in " ".join(rerun.stderr.split()),
            "staging_left_after_next_run": len(list(out.glob(STAGING + "*")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anytime", action="store_true",
                    help="Kill at a random moment of the whole run (default: while a staging folder exists).")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="edgekit-kill9-") as tmp:
        root = Path(tmp)
        source = make_source(root)
        t0 = time.perf_counter()
        subprocess.run(convert_cmd(source, root / "full"), check=True, capture_output=True)
        full_s = time.perf_counter() - t0
        rows = [trial(source, root / f"out{i}", full_s, rng, not args.anytime) for i in range(args.trials)]
    summary = {
        "trials": len(rows), "kill": "anytime" if args.anytime else "while staging",
        "full_conversion_s": round(full_s, 1),
        "kills_leaving_staging": sum(r["staging_left_after_kill"] > 0 for r in rows),
        "broken_files_after_kill": sum(r["broken_files_after_kill"] for r in rows),
        "next_runs_ok": sum(r["next_run_exit"] == 0 for r in rows),
        "next_runs_reporting_removal": sum(r["next_run_said_removed"] for r in rows),
        "staging_left_after_next_run": sum(r["staging_left_after_next_run"] for r in rows),
    }
    result = {"summary": summary, "trials": rows, "python": sys.version.split()[0]}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
