"""Task pipelines: what an app calls instead of re-implementing preprocessing.

A converted artifact records its task and what its inputs need (manifest ``preprocess`` plus the
files in ``<name>.assets/``). Each task has one pipeline class, registered here by task name
(``text-classification``, ``feature-extraction``, ``image-classification``); the methods of
:class:`edgekit.runtime.Model` (``classify``, ``embed``) find the pipeline for the artifact's task.
Pipelines use the ``tokenizers`` package and Pillow, never torch or transformers.

>>> with edgekit.load("out/r8-minilm-int8.onnx") as m:  # doctest: +SKIP
...     m.classify(["oil prices fell", "quarterly profit rose"], top_k=2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.errors import ArtifactError, ConfigError
from edgekit.registry import Registry

if TYPE_CHECKING:
    from edgekit.runtime import Model
    from edgekit.tasks._base import Pipeline
    from edgekit.tasks._image import ImageSpec, from_hf_preprocessor, load_pixels, to_tensor  # noqa: F401
    from edgekit.tasks._spec import check_preprocess  # noqa: F401 - public, lazily

PIPELINES: Registry[str, type[Pipeline]] = Registry("task pipeline", "edgekit.tasks", "edgekit.tasks")

# public names whose code lives in this package's private modules, imported on first use
_EXPORTS = {"ImageSpec": "edgekit.tasks._image", "load_pixels": "edgekit.tasks._image",
            "to_tensor": "edgekit.tasks._image", "from_hf_preprocessor": "edgekit.tasks._image",
            "check_preprocess": "edgekit.tasks._spec"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgekit.tasks' has no attribute {name!r}")


# tasks served by a backend's own methods rather than a pipeline (llama.cpp's generate/chat)
NATIVE_VERBS: dict[str, tuple[str, ...]] = {"text-generation": ("generate", "chat")}


def verbs_by_task() -> dict[str, tuple[str, ...]]:
    """Every task edgekit serves and the Model methods that serve it."""
    table = {task: cls.verbs for task, cls in PIPELINES.items()}
    return {**table, **NATIVE_VERBS}


def task_of(model: Model) -> str | None:
    """The artifact's task: the manifest's, else the one its recorded preprocessing implies."""
    m = model.manifest
    if m is None:
        return None
    return m.task or infer_task(m.preprocess)


def infer_task(preprocess: dict[str, Any]) -> str | None:
    """The task a preprocessing record implies (for an nn.Module converted with ``preprocess=``)."""
    if "image" in preprocess:
        return "image-classification"
    if preprocess.get("tokenizer"):
        return "feature-extraction" if "pooling" in preprocess and "id2label" not in preprocess \
            else "text-classification"
    return None


def pipeline_for(model: Model, verb: str | None = None) -> Pipeline:
    """The pipeline serving the artifact's task, cached on the model; with ``verb`` (``"classify"``),
    a :class:`ConfigError` naming what to call instead when the task has no such method."""
    if model.manifest is None:
        raise ArtifactError(f"{model.path.name} has no edgekit manifest, so its task and preprocessing "
                            "are unknown",
                            fix="convert the model with `edgekit convert` (it records both), or call "
                            "run() with arrays")
    task = task_of(model)
    if verb is not None:
        check_verb(model, verb, task)
    cache: dict[str, Pipeline] = model.__dict__.setdefault("_pipelines", {})
    if task not in cache:
        if task is None or task not in PIPELINES:
            if verb is not None:
                raise unsupported(model, verb, task)
            known = ", ".join(t for t, _ in PIPELINES.items())
            raise ConfigError(f"{model.path.name} has task {task!r}, which has no task pipeline",
                              fix=f"pipelines exist for: {known}; a GGUF language model measures generation "
                              "with Model.bench_tokens()")
        cache[task] = PIPELINES.get(task)(model)
    return cache[task]


def check_verb(model: Model, verb: str, task: str | None) -> None:
    """Raise when ``verb`` is not a method of ``task``'s pipeline."""
    if task is None or verb not in verbs_by_task().get(task, ()):
        raise unsupported(model, verb, task)


def unsupported(model: Model, verb: str, task: str | None) -> ConfigError:
    """The error for ``model.<verb>()`` on an artifact whose task has no such method."""
    table = verbs_by_task()
    serving = [t for t, verbs in table.items() if verb in verbs]
    wanted = (f"{verb}() needs an artifact whose task is {' or '.join(serving)}" if serving
              else f"{verb}() is not a task method")
    if task is None:
        return ConfigError(f"{model.path.name} records no task, so {wanted}",
                           fix="call run() with arrays, or convert the model with preprocess={...} "
                           "(see docs/tasks.md)")
    instead = table.get(task)
    if verb in (instead or ()):  # the task has the method, this format's runtime does not
        return ConfigError(f"{verb}() on {task} models runs on GGUF artifacts (llama.cpp), "
                           f"not on {model.format.value}",
                           fix="convert the model with `edgekit convert SRC --to gguf` and load the .gguf file")
    fix = (f"this artifact's task is served by: {', '.join(v + '()' for v in instead)}" if instead
           else "call run() with arrays")
    return ConfigError(f"{model.path.name} has task {task!r}; {wanted}", fix=fix)


def check_input_kind(model_name: str, task: str | None, kind: str) -> None:
    """Raise when ``kind`` ("text" | "image") is not what ``task``'s pipeline takes (CLI --text/--image)."""
    if task is None or task not in PIPELINES:
        return
    wanted = PIPELINES.get(task).input_kind
    if wanted != kind:
        raise ConfigError(f"{model_name} has task {task!r}, which takes {wanted} input, not {kind}",
                          fix=f"pass --{wanted} instead of --{kind}")
