"""pyuncomp: uncertainty-aware KV-cache compression (UNComp) for llama.cpp GGUF models.

Import pyuncomp before llama_cpp: it makes llama-cpp-python load pyuncomp's own libllama.
"""

from ._native import NativeLibraryError
from .config import METHODS, CompressionConfig
from .llama import Llama
from .models import BUILTIN_MODELS, DEFAULT_MODEL, resolve as resolve_model

__all__ = ["Llama", "CompressionConfig", "METHODS", "NativeLibraryError",
           "BUILTIN_MODELS", "DEFAULT_MODEL", "resolve_model"]
__version__ = "0.1.0"
