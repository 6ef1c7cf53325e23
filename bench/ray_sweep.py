"""The same matrix sweep, serial in one process against Ray tasks on a local Ray, on this machine.

Two sources (the built-in digits CNN and a small MLP saved as a torch.export ``.pt2``), ONNX and
OpenVINO, fp32 / int8 / int4 where each applies, with ``--eval``-free parity rows. Rounds alternate
the order (serial first, then Ray first) so a load burst does not favour one side; medians of the
wall times are reported with the rows, and the per-row costs (conversion seconds, benchmark seconds,
artifact sizes) that docs/scale.md turns into the expected scaling for N nodes.

    .venv/bin/python bench/ray_sweep.py --rounds 2          # markdown table; JSON in bench/results/

Expect no speedup on a 2-core machine beyond overlapping one conversion's I/O with another's work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cpu_model, offline_quiet  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent


def _sources(tmp: Path) -> list[str]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    torch.export.save(torch.export.export(mlp, (torch.randn(1, 64),)), tmp / "mlp.pt2")
    return ["builtin:digits-cnn", str(tmp / "mlp.pt2")]


def _sweep(sources: list[str], out: Path, ray: str | None, max_parallel: int) -> dict[str, Any]:
    from edgekit.matrix import BenchSettings, matrix

    bench = BenchSettings(warmup=5, runs=50, isolated=True)
    t = time.perf_counter()
    if ray:  # one Ray for both sources, its start-up inside the timed region, as `edgekit matrix A B --ray` does
        from edgekit.matrix import connect_ray

        connect_ray(ray, max_parallel)
    try:
        results = [matrix(s, targets="onnx,openvino", out=out / Path(s).stem.split(":")[-1], bench=bench,
                          plot=False, ray=ray, max_parallel=max_parallel if ray else None) for s in sources]
    finally:
        if ray:
            import ray as ray_

            ray_.shutdown()
    wall = time.perf_counter() - t
    rows = [r for res in results for r in res.rows if r.format != "pytorch"]
    return {"wall_s": wall, "rows": len(rows), "ok": sum(r.status == "ok" for r in rows),
            "per_row": [{"label": f"{res.source.get('name')}:{r.label}", "status": str(r.status), "reason": r.reason,
                         "convert_s": r.build_seconds,
                         "export_s": r.export_seconds, "bench_s": (r.bench_window[1] - r.bench_window[0])
                         if r.bench_window else None, "size_bytes": r.size_bytes}
                        for res in results for r in res.rows if r.format != "pytorch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-parallel", type=int, default=2)
    args = ap.parse_args()
    offline_quiet()
    runs: dict[str, list[dict[str, Any]]] = {"serial": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="edgekit-ray-sweep-") as tmp_:
        tmp = Path(tmp_)
        sources = _sources(tmp)
        for i in range(args.rounds):
            order = ["serial", "ray"] if i % 2 == 0 else ["ray", "serial"]
            for kind in order:
                out = tmp / f"{kind}-{i}"
                res = _sweep(sources, out, "local" if kind == "ray" else None, args.max_parallel)
                runs[kind].append(res)
                print(f"round {i} {kind}: {res['wall_s']:.1f} s, {res['ok']}/{res['rows']} rows ok",
                      file=sys.stderr)
    summary = {k: {"wall_s_median": statistics.median(r["wall_s"] for r in v), "rows": v[0]["rows"],
                   "ok": v[0]["ok"]} for k, v in runs.items()}
    print(f"\nhost: {cpu_model()}, rounds: {args.rounds}, --max-parallel {args.max_parallel}\n")
    print("| executor | rows (ok) | wall time, median s | vs serial |")
    print("|---|---|---|---|")
    base = summary["serial"]["wall_s_median"]
    for k, v in summary.items():
        print(f"| {k} | {v['rows']} ({v['ok']}) | {v['wall_s_median']:.1f} | {v['wall_s_median'] / base:.2f}x |")
    print("\n| row | export s | build s | bench s | size KB |")
    print("|---|---|---|---|---|")
    for r in runs["serial"][0]["per_row"]:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"
        print(f"| {r['label']} | {f(r['export_s'])} | {f(r['convert_s'])} | {f(r['bench_s'])} | "
              f"{(r['size_bytes'] or 0) / 1024:.0f} |")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "ray_sweep.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
