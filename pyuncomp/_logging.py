"""llama.cpp's and ggml's log messages through llama-cpp-python's logger, at their own levels.

llama-cpp-python 0.3.36 maps ggml's log levels by an older enum (ERROR = 3, DEBUG = 4). Against the
pinned llama.cpp (DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5) that prints warnings as errors and drops
errors as debug lines under ``verbose=False``, among them the text of a CUDA error before ggml aborts.
``llama_cpp.Llama(verbose=...)`` still sets the threshold: the "llama-cpp-python" logger's level.
"""

from __future__ import annotations

import ctypes
import logging
import sys

GGML_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
GGML_LOG_LEVEL_CONT = 5  # the rest of the previous message

logger = logging.getLogger("llama-cpp-python")
_last_level = logging.DEBUG
_callback = None  # the ctypes callback libllama holds: it must outlive every call into libllama


def _print_at_level(level: int, text: bytes, user_data) -> None:
    global _last_level
    if level != GGML_LOG_LEVEL_CONT:
        _last_level = GGML_LEVELS.get(level, logging.CRITICAL)
    if logger.level <= _last_level:
        print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)


def install(llama_cpp) -> None:
    """Routes libllama's log (and ggml's) through _print_at_level."""
    global _callback
    _callback = llama_cpp.llama_log_callback(_print_at_level)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
