"""Knowledge distillation: the original model (teacher) trains a smaller one (student) on user data.

The loss is the soft-target KL divergence at a temperature (``soft_loss="mse"`` for embedding
outputs), plus cross-entropy on hard labels when they are given, plus, with ``hidden_weight``,
the mean squared error between matched hidden states. Hidden states are captured with forward
hooks on named blocks (a Hugging Face layer, a conv stage); without a ``layer_map`` the largest
``ModuleList`` of each model is matched evenly (student block ``i`` of ``S`` to teacher block
``round((i + 1) * T / S) - 1``), and where widths differ a learned linear projection (student
width -> teacher width, trained with the student, then dropped) maps one onto the other.

Built for CPUs: small batches with gradient accumulation, early stopping on an evaluation
metric, and a checkpoint every epoch (and every ``checkpoint_steps`` optimizer steps) from which
an interrupted run resumes where it stopped.

>>> res = distill(teacher, student, calib_set, labels=y, epochs=3, eval=lambda m: accuracy(m))  # doctest: +SKIP
>>> res.final_loss < res.initial_loss  # doctest: +SKIP
True
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import CalibrationError, ConfigError
from edgekit.optimize._distill_layers import (  # noqa: F401 - module_names, derive_layer_map: public here
    Hooks,
    derive_layer_map,
    model_of,
    module_names,
    non_width,
    submodule,
    tensor_of,
)
from edgekit.types import ProgressFn

CHECKPOINT = "distill.pt"
LOSS_SAMPLES = 256  # samples the before/after distillation loss is measured on


@dataclass
class DistillResult:
    """The trained student (in eval mode, best epoch's weights) and how training went."""

    student: Any
    history: list[dict[str, float]]  # per epoch: loss, soft, hard, hidden, metric
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    initial_loss: float  # soft-target loss of the student against the teacher, before and after
    final_loss: float
    resumed_from: dict[str, int] | None = None  # {"epoch", "batch"} of the checkpoint resumed
    layer_map: dict[str, str] | None = None
    projected: list[str] = field(default_factory=list)  # student layers given a width projection
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the student, as plain data (for a manifest's stage report)."""
        d = asdict(self)
        d.pop("student")
        return d


def _first(out: Any) -> Any:
    """A model's prediction output: the tensor, ``logits`` of a mapping, or the first of a tuple."""
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    return tensor_of(out)


def _masked_mean(per: Any, mask: Any) -> Any:
    """Mean of per-position values, over the real tokens only when a matching mask is given."""
    if mask is not None and per.dim() == 2 and tuple(per.shape) == tuple(mask.shape):
        m = mask.to(per.dtype)
        return (per * m).sum() / m.sum().clamp_min(1.0)
    return per.mean()


@dataclass
class _Loss:
    temperature: float
    alpha: float
    hidden_weight: float
    soft_loss: str

    def soft(self, s: Any, t: Any, mask: Any) -> Any:
        import torch.nn.functional as F

        if self.soft_loss == "mse":
            return _masked_mean(((s - t) ** 2).mean(-1), mask)
        temp = self.temperature
        ls, lt = F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1)
        return _masked_mean((lt.exp() * (lt - ls)).sum(-1), mask) * temp * temp

    def hidden(self, pairs: list[tuple[Any, Any]], proj: Any, mask: Any) -> Any:
        total = 0.0
        for i, (sh, th) in enumerate(pairs):
            chan_last = sh.dim() == 4  # NCHW feature maps: project along channels
            if chan_last:
                sh, th = sh.movedim(1, -1), th.movedim(1, -1)
            sh = proj[str(i)](sh)
            total = total + _masked_mean(((sh - th) ** 2).mean(-1) if not chan_last
                                         else ((sh - th) ** 2).mean(), mask)
        return total / max(len(pairs), 1)


def _arrays(data: Any, order: list[str] | None) -> dict[str, np.ndarray]:
    arrays = data.arrays if hasattr(data, "arrays") else data
    if not isinstance(arrays, Mapping) or not arrays:
        raise CalibrationError("distillation data must be a CalibrationSet or a mapping of input name -> array",
                               fix="load it with edgekit.calib.load_calibration, or pass {name: array}")
    if order:
        missing = [n for n in order if n not in arrays]
        if missing:
            raise CalibrationError(f"distillation data lacks input(s) {missing}",
                                   fix=f"key the arrays by the model's input names: {order}")
        return {n: np.asarray(arrays[n]) for n in order}
    return {k: np.asarray(v) for k, v in arrays.items()}


def _fingerprint(settings: dict[str, Any], arrays: dict[str, np.ndarray], labels: Any, *models: Any) -> str:
    """What a checkpoint must match to be resumed: settings, data, and both models' starting weights
    (names, shapes and sums: a different pruning of the same shapes is a different start)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, arr in arrays.items():
        h.update(name.encode() + str(arr.shape).encode() + np.ascontiguousarray(arr).tobytes()[: 1 << 20])
    if labels is not None:
        h.update(np.asarray(labels).tobytes())
    for model in models:
        for name, p in model.state_dict().items():
            total = float(p.detach().double().sum()) if p.is_floating_point() else int(p.sum())
            h.update(f"{name}{tuple(p.shape)}{total:.6e}".encode())
    return h.hexdigest()[:16]


def _save(path: Path, state: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # a run killed mid-save keeps the previous checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load(path: Path, fingerprint: str) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: start over rather than fail
        return None
    return state if isinstance(state, dict) and state.get("fingerprint") == fingerprint else None


def _metric_value(result: Any) -> tuple[float, bool]:
    if isinstance(result, Mapping):
        return float(result["value"]), bool(result.get("higher_is_better", True))
    return float(result), True


def distill(
    teacher: Any,
    student: Any,
    data: Any,
    *,
    labels: np.ndarray | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    hidden_weight: float = 0.0,
    layer_map: Mapping[str, str] | None = None,
    soft_loss: str = "kl",
    epochs: int = 3,
    batch_size: int = 8,
    grad_accum: int = 1,
    lr: float = 1e-4,
    eval: Callable[[Any], Any] | None = None,  # noqa: A002 - the contract's name
    patience: int | None = 2,
    checkpoint_dir: str | Path | None = None,
    checkpoint_steps: int = 200,
    progress: ProgressFn | None = None,
    seed: int = 0,
) -> DistillResult:
    """Train ``student`` to imitate ``teacher`` on ``data`` (a CalibrationSet or ``{input: array}``).

    ``teacher``/``student`` are ``nn.Module``s taking the inputs positionally (a ``ModelSource``
    is taken as its module, inputs in its order). ``eval(student)`` returns a float (higher is
    better) or a metric dict; the best epoch's weights are kept and training stops after
    ``patience`` epochs without improvement. With ``checkpoint_dir`` an interrupted run resumes.
    The student is trained in place and returned in eval mode.
    """
    import torch

    from edgekit.sources.module import _to_eval

    if soft_loss not in ("kl", "mse"):
        raise ConfigError(f"unknown soft_loss {soft_loss!r}", fix="use kl (logits) or mse (embeddings)")
    t0 = time.perf_counter()
    order = list(teacher.input_names) if hasattr(teacher, "input_names") else None
    t_mod, s_mod = model_of(teacher), model_of(student)
    arrays = _arrays(data, order)
    n = len(next(iter(arrays.values())))
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if len(labels) != n:
            raise CalibrationError(f"{len(labels)} labels for {n} distillation samples",
                                   fix="give one label per sample, or none (soft targets only)")
    torch.manual_seed(seed)
    loss_fn = _Loss(temperature, alpha, hidden_weight, soft_loss)
    lmap = dict(layer_map) if layer_map else (derive_layer_map(t_mod, s_mod) if hidden_weight > 0 else None)
    s_hooks = t_hooks = None
    if hidden_weight > 0 and lmap:
        s_layers = [submodule(s_mod, k, "student") for k in lmap]
        t_layers = [submodule(t_mod, v, "teacher") for v in lmap.values()]
        s_hooks, t_hooks = Hooks(s_layers), Hooks(t_layers)

    try:  # the hooks sit on the caller's modules: removed whatever happens
        def batch(idx: np.ndarray) -> tuple[list[Any], Any, Any]:
            tensors = [torch.from_numpy(np.ascontiguousarray(a[idx])) for a in arrays.values()]
            mask = torch.from_numpy(arrays["attention_mask"][idx]) if "attention_mask" in arrays else None
            y = torch.from_numpy(labels[idx]) if labels is not None else None
            return tensors, mask, y

        def teacher_out(tensors: list[Any]) -> Any:
            with torch.no_grad():
                return _first(t_mod(*tensors)).float()

        _to_eval(t_mod)  # the teacher runs under no_grad: its weights are left as they are
        proj = torch.nn.ModuleDict()
        projected: list[str] = []
        if s_hooks is not None and t_hooks is not None:  # probe once for the widths of matched layers
            tensors, _, _ = batch(np.arange(min(n, 2)))
            _to_eval(s_mod)
            with torch.no_grad():
                s_mod(*tensors)
                teacher_out(tensors)
            for i, (name, sh, th) in enumerate(zip(lmap, s_hooks.values, t_hooks.values)):
                sw, tw = (x.shape[1 if x.dim() == 4 else -1] for x in (sh, th))
                proj[str(i)] = torch.nn.Linear(sw, tw, bias=False) if sw != tw else torch.nn.Identity()
                if sw != tw:
                    projected.append(name)
                if non_width(sh) != non_width(th):
                    raise ConfigError(f"student layer {name!r} gives shape {list(sh.shape)}, teacher layer "
                                      f"{lmap[name]!r} gives {list(th.shape)}: only the width may differ",
                                      fix="map layers whose outputs have the same batch, sequence and spatial sizes")

        def losses(idx: np.ndarray, train: bool) -> dict[str, Any]:
            tensors, mask, y = batch(idx)
            t = teacher_out(tensors)
            s = _first(s_mod(*tensors)).float()
            out = {"soft": loss_fn.soft(s, t, mask)}
            total = out["soft"] if y is None else alpha * out["soft"]
            if y is not None:
                if s.dim() != 2:
                    raise CalibrationError(f"hard labels need one prediction per sample; the student's output "
                                           f"has shape {list(s.shape)}", fix="distill without labels")
                out["hard"] = torch.nn.functional.cross_entropy(s, y)
                total = total + (1 - alpha) * out["hard"]
            if train and s_hooks is not None and t_hooks is not None:
                out["hidden"] = loss_fn.hidden(list(zip(s_hooks.values, t_hooks.values)), proj, mask)
                total = total + hidden_weight * out["hidden"]
            out["loss"] = total
            return out

        def soft_loss_now() -> float:
            _to_eval(s_mod)
            idx = np.arange(min(n, LOSS_SAMPLES))
            with torch.no_grad():
                parts = [float(losses(c, train=False)["soft"]) * len(c)
                         for c in np.array_split(idx, max(1, len(idx) // max(batch_size, 32)))]
            return sum(parts) / len(idx)

        params = [p for p in s_mod.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the student has no trainable parameters (every requires_grad is False)",
                              fix="unfreeze it first: student.requires_grad_(True) (a copy of a frozen "
                              "model inherits its flags)")
        params += list(proj.parameters())
        optimizer = torch.optim.AdamW(params, lr=lr)
        settings = {"temperature": temperature, "alpha": alpha, "hidden_weight": hidden_weight, "lr": lr,
                    "layer_map": lmap, "soft_loss": soft_loss, "batch_size": batch_size, "grad_accum": grad_accum,
                    "seed": seed, "n": n}
        ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
        fingerprint = _fingerprint(settings, arrays, labels, s_mod, t_mod)
        state = _load(ckpt, fingerprint) if ckpt is not None else None
        start_epoch, start_batch, history, best, best_state, bad_epochs, step = 0, 0, [], None, None, 0, 0
        resumed = None
        if state is not None:
            s_mod.load_state_dict(state["student"])
            proj.load_state_dict(state["projections"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
            history, best, best_state, bad_epochs = state["history"], state["best"], state["best_state"], state["bad"]
            initial = state["initial_loss"]
            resumed = {"epoch": start_epoch, "batch": start_batch}
        else:
            initial = soft_loss_now()
        running: dict[str, float] = dict(state["running"]) if state is not None else {}

        def save(epoch: int, next_batch: int) -> None:
            if ckpt is not None:
                _save(ckpt, {"fingerprint": fingerprint, "epoch": epoch, "batch": next_batch, "step": step,
                             "student": s_mod.state_dict(), "projections": proj.state_dict(),
                             "optimizer": optimizer.state_dict(), "history": history, "best": best,
                             "best_state": best_state, "bad": bad_epochs, "initial_loss": initial,
                             "running": running})

        per_epoch = -(-n // batch_size)
        stopped = False
        for epoch in range(start_epoch, epochs):
            if patience is not None and bad_epochs >= patience:
                stopped = True
                break
            s_mod.train()
            order_idx = np.random.default_rng(seed + epoch).permutation(n)
            chunks = [order_idx[i:i + batch_size] for i in range(0, n, batch_size)]
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                running = {}
            for b in range(first, len(chunks)):
                parts = losses(chunks[b], train=True)
                (parts["loss"] / grad_accum).backward()
                for k, v in parts.items():
                    running[k] = running.get(k, 0.0) + float(v.detach()) * len(chunks[b])
                if (b + 1) % grad_accum == 0 or b + 1 == len(chunks):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    if checkpoint_steps and step % checkpoint_steps == 0 and b + 1 < len(chunks):
                        save(epoch, b + 1)
                if progress is not None:
                    seen = sum(len(c) for c in chunks[:b + 1])
                    progress(f"distill | epoch {epoch + 1}/{epochs} loss {running['loss'] / seen:.4f}",
                             epoch * per_epoch + b + 1, epochs * per_epoch)
            row = {k: v / n for k, v in running.items()}
            row["epoch"] = epoch + 1
            if eval is not None:
                _to_eval(s_mod)
                value, higher = _metric_value(eval(s_mod))
            else:  # no metric: the epoch's training loss decides
                value, higher = row["loss"], False
            row["metric"] = value
            history.append(row)
            better = best is None or (value > best["value"] if higher else value < best["value"])
            if better:
                best = {"value": value, "epoch": epoch + 1}
                best_state = copy.deepcopy(s_mod.state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
            save(epoch + 1, 0)
    finally:
        for hooks in (s_hooks, t_hooks):
            if hooks is not None:
                hooks.remove()
    if best_state is not None:
        s_mod.load_state_dict(best_state)
    final = soft_loss_now()
    _to_eval(s_mod)
    return DistillResult(student=student, history=history, best_epoch=best["epoch"] if best else 0,
                         epochs_run=len(history), stopped_early=stopped, initial_loss=initial,
                         final_loss=final, resumed_from=resumed, layer_map=lmap, projected=projected,
                         seconds=round(time.perf_counter() - t0, 3))
