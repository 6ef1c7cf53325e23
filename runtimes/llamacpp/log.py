"""llama.cpp's log, kept in memory instead of printed, and the one place llama_cpp is imported.

The library never prints; llama.cpp logs every load to stderr unless told otherwise. Warnings
and errors are kept (the last error is the reason given in the errors edgekit raises).
"""

from __future__ import annotations

import ctypes
from collections import deque
from types import ModuleType
from typing import Any, ClassVar

GGML_LOG_ERROR, GGML_LOG_WARN, GGML_LOG_CONT = 4, 3, 5  # ggml.h enum ggml_log_level


class LlamaLog:
    """llama.cpp's log lines (warnings and errors) kept in memory instead of printed."""

    lines: ClassVar[deque[tuple[int, str]]] = deque(maxlen=200)
    _callback: ClassVar[Any] = None
    _last_level: ClassVar[int] = 0

    @classmethod
    def install(cls, llama_cpp: ModuleType) -> None:
        if cls._callback is not None:
            return

        @llama_cpp.llama_log_callback
        def _log(level: int, text: bytes, user_data: Any) -> None:
            level = cls._last_level if level == GGML_LOG_CONT else level
            cls._last_level = level
            if level in (GGML_LOG_ERROR, GGML_LOG_WARN):
                cls.lines.append((level, text.decode("utf-8", "replace").rstrip()))

        cls._callback = _log  # keep a reference: the C side only holds the pointer
        llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))

    @classmethod
    def mark(cls) -> int:
        return len(cls.lines)

    @classmethod
    def last_error(cls, since: int = 0) -> str:
        """The reason in the last error line logged since ``mark()``."""
        errors = [t.strip() for lv, t in list(cls.lines)[since:] if lv == GGML_LOG_ERROR and t.strip()]
        specific = [e for e in errors if not e.endswith("failed to load model")] or errors
        # "llama_model_load: error loading model: <reason>" -> "<reason>"
        return specific[-1].split("error loading model: ")[-1] if specific else ""


def llama_cpp_module() -> ModuleType:
    """Import llama_cpp (or name the extra that installs it) with its log captured."""
    from edgekit.deps import require

    llama_cpp = require("llama_cpp", "llamacpp", "running GGUF models")
    LlamaLog.install(llama_cpp)
    return llama_cpp
