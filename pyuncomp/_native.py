"""Loads pyuncomp's libllama: for llama-cpp-python's ctypes layer and for our C API through cffi.

llama-cpp-python loads libllama once, at import, from ``$LLAMA_CPP_LIB_PATH`` when set. We point that
at the libraries installed inside this package before ``llama_cpp`` is first imported; if something
already imported ``llama_cpp`` with another library, our symbols are missing and we say so.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path

import cffi

from . import _logging

# PYUNCOMP_LIB_DIR: load libllama from another build of this source instead (e.g. the sanitizer build
# the tests make), with the header installed beside this package
LIB_DIR = Path(os.environ.get("PYUNCOMP_LIB_DIR") or Path(__file__).resolve().parent / "lib")
HEADER = Path(__file__).resolve().parent / "include" / "uncomp.h"


class NativeLibraryError(ImportError):
    """pyuncomp's native library is missing or another libllama is already loaded."""


def _library_path() -> Path:
    lib = LIB_DIR / ("libllama.dylib" if sys.platform == "darwin" else "libllama.so")
    if not lib.exists():
        raise NativeLibraryError(f"pyuncomp's native library is missing ({lib}); reinstall with `pip install .`")
    return lib


def _import_llama_cpp():
    lib = _library_path()
    if "llama_cpp" not in sys.modules:
        os.environ["LLAMA_CPP_LIB_PATH"] = str(LIB_DIR)
    import llama_cpp

    loaded = getattr(llama_cpp.llama_cpp._lib, "_name", "")
    if not hasattr(llama_cpp.llama_cpp._lib, "llama_uncomp_params_check"):
        raise NativeLibraryError(
            f"llama_cpp was imported before pyuncomp and loaded another libllama ({loaded}). "
            "Import pyuncomp first, or set LLAMA_CPP_LIB_PATH="
            f"{LIB_DIR} before importing llama_cpp."
        )
    return llama_cpp, lib


def _cdef_from_header(text: str) -> str:
    """The declarations of uncomp.h in the form cffi parses: no preprocessor lines, no C++ guards."""
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    lines = [ln.replace("LLAMA_API ", "") for ln in lines]
    prelude = "typedef int32_t llama_seq_id;\nstruct llama_context;\n"
    return prelude + "\n".join(lines)


llama_cpp, _lib_path = _import_llama_cpp()
_logging.install(llama_cpp)
ffi = cffi.FFI()
ffi.cdef(_cdef_from_header(HEADER.read_text()))
lib = ffi.dlopen(str(_lib_path))


def context_ptr(ctx) -> "ffi.CData":
    """A cffi pointer to the llama_context behind a llama-cpp-python context handle (ctypes)."""
    address = ctypes.cast(ctx, ctypes.c_void_p).value
    if not address:
        raise RuntimeError("the model has no llama_context (was it closed?)")
    return ffi.cast("struct llama_context *", address)
