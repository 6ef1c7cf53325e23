"""Running a module on numpy feeds, and first-order (Taylor) weight scores on user data.

Taylor importance of a weight is ``|w * dL/dw|`` summed over batches: the first-order estimate of
how much the loss changes if the weight is zeroed. With labels in the feed (``labels``) the loss
is cross-entropy to them; without labels it is cross-entropy to the model's own arg-max
prediction for logits (a KL to its own soft prediction has zero gradient at the unpruned model,
so it would rank nothing), and half the mean squared output for feature outputs (embeddings).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.calib import LABEL_KEYS
from edgekit.errors import CalibrationError

if TYPE_CHECKING:
    import torch
    from torch import nn

Feed = Mapping[str, np.ndarray]
LossFn = Callable[[Any, Feed], "torch.Tensor"]


def feed_args(model: nn.Module, input_names: Sequence[str] | None = None
              ) -> Callable[[Feed], tuple[tuple, dict]]:
    """``to_args(feed) -> (args, kwargs)`` for ``model``: positional (in ``input_names`` order) when
    its forward takes only ``*args`` (an edgekit source wrapper), else keywords."""
    import torch

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = bool(params) and all(p.kind == p.VAR_POSITIONAL for p in params)

    def to_args(feed: Feed) -> tuple[tuple, dict]:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()
                   if k not in LABEL_KEYS}
        if not positional:
            return (), tensors
        order = list(input_names) if input_names else list(tensors)
        missing = [n for n in order if n not in tensors]
        if missing:
            raise CalibrationError(f"a data batch lacks input(s) {missing}",
                                   fix=f"key every batch by the model's input names: {order}")
        return tuple(tensors[n] for n in order), {}

    return to_args


def make_call(model: nn.Module, input_names: Sequence[str] | None = None) -> Callable[[Feed], Any]:
    """``call(feed)`` runs ``model`` on a numpy feed (see :func:`feed_args`)."""
    to_args = feed_args(model, input_names)

    def call(feed: Feed) -> Any:
        args, kwargs = to_args(feed)
        return model(*args, **kwargs)

    return call


def first_output(out: Any) -> torch.Tensor:
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                return o
    raise CalibrationError(f"the model returned {type(out).__name__}, with no float tensor to score",
                           fix="pass loss=callable(outputs, feed) -> scalar tensor to prune()")


def default_loss(logits: bool) -> LossFn:
    """Cross-entropy to ``labels`` or to the model's own arg-max (logits); else half mean square."""
    import torch

    def loss(out: Any, feed: Feed) -> torch.Tensor:
        y = first_output(out).float()
        label = next((feed[k] for k in LABEL_KEYS if k in feed), None)
        if y.dim() >= 2 and y.shape[-1] > 1 and (logits or label is not None):
            flat = y.reshape(-1, y.shape[-1])
            target = torch.as_tensor(np.asarray(label), dtype=torch.long).reshape(-1) \
                if label is not None else flat.argmax(-1).detach()
            if target.numel() != flat.shape[0]:
                raise CalibrationError(f"{target.numel()} labels for {flat.shape[0]} predictions",
                                       fix="give one label per sample (per token for token outputs)")
            return torch.nn.functional.cross_entropy(flat, target)
        return 0.5 * y.pow(2).mean()

    return loss


def taylor_scores(model: nn.Module, feeds: Iterable[Feed], call: Callable[[Feed], Any],
                  loss: LossFn) -> dict[int, torch.Tensor]:
    """``|w * dL/dw|`` per floating parameter (keyed by ``id(param)``), summed over ``feeds``."""
    import torch

    params = [p for p in model.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    scores = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params}
    batches = 0
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for feed in feeds:
                value = loss(call(feed), feed)
                grads = torch.autograd.grad(value, params, allow_unused=True)
                for p, g in zip(params, grads):
                    if g is not None:
                        scores[id(p)] += (p.detach().float() * g.float()).abs()
                batches += 1
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    if batches == 0:
        raise CalibrationError("importance='taylor' got no data batches",
                               fix="pass data=[{input_name: array, ...}, ...] (batches of real inputs)")
    return scores
