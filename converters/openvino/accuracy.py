"""Accuracy-aware int8 for OpenVINO: ``nncf.quantize_with_accuracy_control`` on edgekit's labelled
evaluation data, and which layers it had to keep in float.

NNCF first quantizes the whole model, measures top-1 accuracy of the float and the int8 model on
the labelled samples, then reverts the most harmful quantized layers to float until the drop is
within ``max_accuracy_drop``. The plainly quantized model is written to the work directory
(``intermediate_model_dir``), so the reverted layers are the ones quantized there and not in the
result.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import CalibrationError

if TYPE_CHECKING:
    from edgekit.converters import BuildContext


def _accuracy(compiled: Any, items: Iterable[tuple[dict[str, np.ndarray], np.ndarray]]) -> tuple[float, list[float]]:
    """NNCF's validation_fn: top-1 accuracy of the first output, and 1/0 per item (for ranking)."""
    hits: list[float] = []
    for feed, labels in items:
        out = np.asarray(compiled(feed)[0])
        pred = out.reshape(len(labels), -1).argmax(-1)
        hits.extend((pred == labels).astype(float).tolist())
    return (float(np.mean(hits)) if hits else 0.0), hits


def quantize_with_accuracy_control(model: Any, dataset: Any, ctx: BuildContext, kwargs: dict[str, Any],
                                   modules: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """Quantize ``model`` to int8, keeping layers in float until the accuracy drop on
    ``ctx.evaluation`` is at most ``max_accuracy_drop``; returns the model and a report whose
    ``kept_in_float`` names each reverted OpenVINO op and, where known, its PyTorch module."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from edgekit.converters.openvino import graph

    opts = ctx.options
    evaluation = ctx.evaluation
    if evaluation is None:
        raise CalibrationError(
            f"max_accuracy_drop={opts.max_accuracy_drop} needs labelled evaluation data",
            fix="pass --eval data.npz (the inputs plus 'labels'), or drop -O max_accuracy_drop")
    items = [(batch, evaluation.labels[i:i + 1]) for i, batch in enumerate(evaluation.data.batches(1))]
    validation = nncf.Dataset(items)
    work = ctx.workdir / "accuracy-control"
    work.mkdir(exist_ok=True)
    params = AdvancedAccuracyRestorerParameters(intermediate_model_dir=str(work))
    result = nncf.quantize_with_accuracy_control(
        model, dataset, validation, _accuracy, max_drop=float(opts.max_accuracy_drop),
        drop_type=nncf.DropType(opts.accuracy_drop_type),
        advanced_accuracy_restorer_parameters=params, **kwargs)
    plain_xml = work / "intermediate_model.xml"
    quantized_before = graph.quantized_ops(ov.Core().read_model(str(plain_xml))) if plain_xml.is_file() else []
    quantized_after = set(graph.quantized_ops(result))
    kept = [n for n in quantized_before if n not in quantized_after]
    return result, {
        "max_drop": opts.max_accuracy_drop, "drop_type": opts.accuracy_drop_type,
        "eval_samples": len(items), "eval_data": evaluation.data.origin,
        "quantized_ops_plain": len(quantized_before), "quantized_ops": len(quantized_after),
        "kept_in_float": kept,
        "kept_in_float_modules": {n: modules.get(n.split("/", 1)[0]) for n in kept},
    }
