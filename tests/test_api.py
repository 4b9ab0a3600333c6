import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

import pyuncomp


def test_llama_is_a_drop_in_subclass():
    assert issubclass(pyuncomp.Llama, llama_cpp.Llama)


def test_llama_cpp_loads_pyuncomps_library():
    assert hasattr(llama_cpp.llama_cpp._lib, "llama_uncomp_layer_stats")


def test_stats_at_ratio_one_report_the_stock_cache(smollm2):
    smollm2.reset()
    smollm2.eval(smollm2.tokenize(b"The quick brown fox jumps over the lazy dog. " * 20))
    stats = smollm2.compression_stats()
    n = stats["n_tokens"]
    assert n == smollm2.n_tokens > 100
    assert stats["layers"] == list(range(30)) and stats["swa_layers"] == []
    # SmolLM2: 3 KV heads, every head of every layer holds every token
    assert stats["tokens_kept"] == [[n] * 3] * 30
    # f16 K and V, 3 heads x 64 dims: 2 x 192 x 2 bytes per token and layer
    assert stats["kv_bytes"] == stats["kv_bytes_full"] == 30 * n * 2 * 192 * 2
    assert stats["kv_bytes_allocated"] >= stats["kv_bytes"]
    assert stats["method"] == "uncomp" and stats["ratio"] == 1.0


def test_stats_follow_the_cache_through_reset(smollm2):
    smollm2.eval(smollm2.tokenize(b"Hello"))
    smollm2.reset()
    # llama-cpp-python's reset only rewinds n_tokens; the next eval removes the stale cells
    smollm2.eval(smollm2.tokenize(b"Hi there"))
    stats = smollm2.compression_stats()
    assert stats["tokens_kept"][0] == [stats["n_tokens"]] * 3


@pytest.mark.parametrize("kwargs, field", [
    ({"ratio": 0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"ratio": "x"}, "ratio"), ({"ratio": float("nan")}, "ratio"),
    ({"ratio": -0.1}, "ratio"), ({"ratio": True}, "ratio"), ({"method": "h2o-ish"}, "method"), ({"method": None}, "method"),
    ({"window": 0}, "window"), ({"window": 2.5}, "window"), ({"pool_kernel": 4}, "pool_kernel"),
    ({"n_sink": -1}, "n_sink"), ({"n_head_groups": 0}, "n_head_groups"), ({"budget": 0}, "budget"),
    ({"window": 2**40}, "window"), ({"shrink_cache": "yes"}, "shrink_cache"), ({"shrink_cache": 1}, "shrink_cache"),
    ({"lookahead": -1}, "lookahead"), ({"lookahead": 65}, "lookahead"), ({"lookahead": 2.5}, "lookahead"),
    ({"lookahead": True}, "lookahead"),
])
def test_bad_compression_parameters_raise_value_error(smollm2_path, kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        pyuncomp.Llama(smollm2_path, verbose=False, **kwargs)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        pyuncomp.Llama(str(tmp_path / "absent.gguf"))


def test_non_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        pyuncomp.Llama(str(bad))


def test_unknown_builtin_model_names_the_choices():
    with pytest.raises(FileNotFoundError, match="smollm2-135m"):
        pyuncomp.resolve_model("no-such-model")


def test_llama_cpp_imported_first_with_another_library_is_a_clear_error(tmp_path):
    # a llama_cpp whose library lacks pyuncomp's symbols, as stock llama-cpp-python's would
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('llama_cpp'); fake.llama_cpp = types.SimpleNamespace(_lib=object())\n"
        "sys.modules['llama_cpp'] = fake\n"
        "try:\n    import pyuncomp\nexcept ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    # run outside the checkout: its pyuncomp/ source folder would shadow the installed package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert out.startswith("NativeLibraryError llama_cpp was imported before pyuncomp")


def test_truncated_gguf_is_a_clear_error(smollm2_path, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(Path(smollm2_path).read_bytes()[: 1 << 20])  # a valid header, then nothing
    with pytest.raises(ValueError, match="Failed to load model"):
        pyuncomp.Llama(str(truncated), ratio=0.05, verbose=False)


def test_llama_cpp_errors_reach_stderr_under_verbose_false(smollm2_path, tmp_path, capfd):
    # llama-cpp-python's own log callback reads ggml's levels by an older enum: under verbose=False it
    # dropped llama.cpp's errors (a CUDA error's text before ggml aborts) and printed its warnings
    llm = pyuncomp.Llama(smollm2_path, n_ctx=256, verbose=False)
    capfd.readouterr()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))  # GGUF's magic, then version 0
    assert not llama_cpp.llama_model_load_from_file(str(bad).encode(), llama_cpp.llama_model_default_params())
    err = capfd.readouterr().err
    assert "bad GGUF version: 0" in err and "error loading model" in err, err
    model = llama_cpp.llama_model_load_from_file(smollm2_path.encode(), llama_cpp.llama_model_default_params())
    assert model and "llama_model_loader" not in capfd.readouterr().err  # its info lines stay quiet
    llama_cpp.llama_model_free(model)
    llm.close()


def test_prompt_longer_than_the_context_is_refused(smollm2_path):
    # the message names n_ctx, not the smaller cache a compressing model allocates until it needs more
    llm = pyuncomp.Llama(smollm2_path, n_ctx=2048, ratio=0.05, verbose=False)
    with pytest.raises(ValueError, match=r"Requested tokens \(2401\) exceed context window of 2048$"):
        llm.create_completion("word " * 2400, max_tokens=4)
    with pytest.raises(ValueError, match="exceed context window of 2048$"):
        list(llm.create_completion("word " * 2400, max_tokens=4, stream=True))
    assert llm.create_completion("The sky is", max_tokens=4, temperature=0.0)["choices"][0]["text"]  # still usable
    llm.close()


def test_a_budget_below_the_window_keeps_the_window_and_sinks(smollm2_path):
    llm = pyuncomp.Llama(smollm2_path, n_ctx=1024, ratio=0.001, method="snapkv", verbose=False)
    llm.eval(llm.tokenize(("The grass is green. " * 120).encode()))
    kept = np.asarray(llm.compression_stats()["tokens_kept"])
    cfg = llm.compression
    assert (kept == cfg.window + cfg.n_sink).all(), kept
    for _ in range(4):  # decoding goes on over the few rows kept
        token = llm.sample(temp=0.0)
        assert 0 <= token < llm.n_vocab()
        llm.eval([token])
    assert np.asarray(llm.compression_stats()["tokens_kept"]).max() == cfg.window + cfg.n_sink + 4
    llm.close()


def test_an_architecture_without_a_kv_cache_is_refused_by_name(tmp_path):
    from synthetic_models import write_mamba_gguf

    path = str(write_mamba_gguf(tmp_path / "mamba.gguf"))
    with pytest.raises(ValueError, match="'mamba' architecture's memory is not a KV cache"):
        pyuncomp.Llama(path, n_ctx=256, ratio=0.1, verbose=False)


def test_on_unsupported_full_warns_and_runs_the_model_uncompressed(tmp_path):
    from synthetic_models import write_mamba_gguf

    path = str(write_mamba_gguf(tmp_path / "mamba.gguf"))
    with pytest.warns(RuntimeWarning, match="'mamba'.*full memory"):
        llm = pyuncomp.Llama(path, n_ctx=1024, ratio=0.1, on_unsupported="full", seed=0, verbose=False)
    try:
        assert llm.compression.method == "full" and llm._ctx.n_ctx() == 1024
        stock = pyuncomp.Llama(path, n_ctx=1024, method="full", seed=0, verbose=False)
        prompt = [259 + i % 41 for i in range(600)]  # token ids: more than the small context it started with
        want = stock(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"]
        assert llm(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"] == want
        stock.close()
    finally:
        llm.close()
    with pytest.raises(ValueError, match="on_unsupported: must be 'error' or 'full'"):
        pyuncomp.Llama(path, ratio=0.1, on_unsupported="warn", verbose=False)


@pytest.mark.parametrize("prune", [False, True])
def test_a_prompt_evaluated_to_nan_logits_is_a_clear_error_not_an_empty_answer(tmp_path, prune):
    from synthetic_models import write_transformer_gguf

    # a NaN norm weight makes every logit NaN; sampling would read them as token 0 and stop
    path = str(write_transformer_gguf(tmp_path / "nan.gguf", "llama", ffn_norm=float("nan")))
    llm = pyuncomp.Llama(path, n_ctx=1024, method="snapkv", ratio=0.5, prefill_prune=prune, prefill_layer=1,
                         prefill_min_tokens=0, seed=0, verbose=False)
    prompt = [1] + [3 + (7 * i) % 290 for i in range(300)]
    with pytest.raises(RuntimeError, match="non-finite logits"):
        llm.create_completion(prompt, max_tokens=4, temperature=0.0)
    good = pyuncomp.Llama(str(write_transformer_gguf(tmp_path / "good.gguf", "llama")), n_ctx=1024, method="snapkv",
                          ratio=0.5, prefill_prune=prune, prefill_layer=1, prefill_min_tokens=0, seed=0,
                          verbose=False)
    assert len(good.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]) > 0
    llm.close()
    good.close()


@pytest.mark.parametrize("method", ["full", "uncomp"])
def test_an_empty_prompt_is_a_clear_error_and_the_model_stays_usable(smollm2_path, method):
    llm = pyuncomp.Llama(smollm2_path, n_ctx=1024, method=method, ratio=0.1, seed=0, verbose=False)
    try:
        for prompt in ("", []):
            with pytest.raises(ValueError, match="prompt: empty"):
                llm.create_completion(prompt, max_tokens=4)
        assert "Paris" in llm("The capital of France is", max_tokens=4, temperature=0.0)["choices"][0]["text"]
    finally:
        llm.close()
