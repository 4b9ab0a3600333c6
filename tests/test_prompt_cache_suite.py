"""llama-cpp-python's own prompt-cache tests (tests/test_llama.py of the pinned sdist), run against
pyuncomp.Llama with compression on: prefix reuse, a reloaded state, an exact RAM-cache hit and a history
edit must give what a fresh evaluation gives. Their models come from the hub; here every model they
build is SmolLM2 with a compressing method whose window is short enough to evict from their prompts."""

import importlib.util
import sys
import tarfile
import types
from pathlib import Path

import pytest

import pyuncomp
from pyuncomp._native import llama_cpp

ROOT = Path(__file__).resolve().parent.parent

# the suite's helpers whose semantics hold over a compressed cache (each compares with a fresh model)
HELPERS = [
    "_assert_exact_cached_prompt_reuse_matches_fresh",
    "_assert_loaded_exact_cached_prompt_reuse_matches_fresh",
    "_assert_ram_cache_exact_prompt_hit_matches_fresh",
    "_assert_shorter_prompt_prefix_reuse_matches_fresh",
    "_assert_prompt_cache_reset_handles_history_edit",
]


def unavailable(*_, **__):
    raise RuntimeError("not available in this run of the suite")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """llama-cpp-python's tests/test_llama.py from the pinned sdist, imported without the hub."""
    sys.path.insert(0, str(ROOT / "third_party"))
    try:
        import fetch_llama_cpp as fetch
    finally:
        sys.path.pop(0)
    lock = fetch.read_lock(ROOT / "third_party" / "llama-cpp-python.lock")
    sdist = fetch.obtain_sdist(lock, ROOT / "third_party" / ".cache")
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/tests/test_llama.py"))
        path = tmp_path_factory.mktemp("suite") / "llama_cpp_test_llama.py"
        path.write_bytes(tar.extractfile(member).read())
    # modules its other tests use (the hub's downloads, scipy's log_softmax); the helpers run here do not
    stubs = {name: types.ModuleType(name) for name in ("huggingface_hub", "scipy", "scipy.special")}
    stubs["huggingface_hub"].hf_hub_download = unavailable
    stubs["scipy.special"].log_softmax = unavailable
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("llama_cpp_test_llama", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, original in saved.items():
            if original is None:
                del sys.modules[name]
            else:
                sys.modules[name] = original
    return module


class EvictionCounter:
    """pyuncomp.Llama factories for the suite that count compressions which really evicted tokens."""

    def __init__(self, method):
        self.method = method
        self.evictions = 0
        counter = self

        class Compressing(pyuncomp.Llama):
            def compress(self):
                done = super().compress()
                stats = self.compression_stats()
                counter.evictions += min(min(k) for k in stats["tokens_kept"]) < stats["n_tokens"]
                return done

        self.cls = Compressing

    def __call__(self, model_path, **kwargs):
        # the suite's prompts are ~5 tokens: window 1 and ratio 0.5 evict about half of them
        return self.cls(model_path, method=self.method, ratio=0.5, window=1, n_sink=1, seed=0, **kwargs)


@pytest.mark.parametrize("method", ["snapkv", "uncomp"])
@pytest.mark.parametrize("helper", HELPERS)
def test_llama_cpp_python_prompt_cache_semantics_hold_when_compressed(suite, monkeypatch, smollm2_path, helper, method):
    factory = EvictionCounter(method)
    proxy = types.SimpleNamespace(**{name: getattr(llama_cpp, name) for name in dir(llama_cpp) if not name.startswith("__")})
    proxy.Llama = factory
    monkeypatch.setattr(suite, "llama_cpp", proxy)
    getattr(suite, helper)(smollm2_path, is_recurrent=False, is_hybrid=False)
    assert factory.evictions > 0, "the suite's prompts were not compressed: the test proves nothing"
