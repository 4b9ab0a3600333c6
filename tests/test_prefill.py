"""Prefill pruning (UNComp's first stage) on SmolLM2-135M: the layers after ``prefill_layer`` run on the
tokens that layer's window attention ranks highest, at their own positions, and cache only those."""

import numpy as np
import pytest

import pyuncomp
from synthetic_models import write_transformer_gguf
from test_engine import N_CTX, passkey_key, passkey_prompt, passkey_score

LAYER = 30 // 4  # the default prefill_layer of SmolLM2's 30 layers
WINDOW = 8


def make(path, **kwargs):
    # these prompts are shorter than the default floor (prefill_min_tokens), which would leave them unpruned
    kwargs.setdefault("prefill_min_tokens", 0)
    return pyuncomp.Llama(path, n_ctx=N_CTX, seed=0, verbose=False, **kwargs)


def prompt_tokens(llm, n_filler=60, depth=0.5):
    return llm.tokenize(passkey_prompt(n_filler, depth, passkey_key(depth)).encode())


@pytest.fixture(scope="module")
def plain(smollm2_path):
    """A prompt evaluated without pruning (and not compressed)."""
    llm = make(smollm2_path, method="snapkv", ratio=0.5, auto_compress=False)
    llm.eval(prompt_tokens(llm))
    yield llm
    llm.close()


def assert_holds_kept_tokens_at_their_positions(pruned, plain, layer, n, window=WINDOW):
    """Layer `layer` (the first after prefill_layer) of the pruned evaluation holds prefill_kept tokens,
    about keep x n with the dropped count a multiple of 256; layer - 1 saw every token as the plain
    evaluation did; the next layer's keys come from the same residual rows at the same positions
    (RoPE): each of its rows is the plain evaluation's key of one token, in increasing positions, the
    pruning window's last, and not simply the last tokens."""
    kept = pruned.prefill_kept
    assert kept < n and (n - kept) % 256 == 0
    np.testing.assert_array_equal(pruned.cached_keys(layer - 1), plain.cached_keys(layer - 1))
    rows = pruned.cached_keys(layer)
    assert rows.shape[0] == n and not rows[: n - kept].any()  # the cells before the kept ones are unused
    full = plain.cached_keys(layer)
    source = [int(np.argmin(np.abs(full - row).max(axis=1))) for row in rows[n - kept:]]
    assert max(float(np.abs(full[s] - row).max()) for s, row in zip(source, rows[n - kept:])) < 1e-2
    assert source == sorted(set(source)) and source[-window:] == list(range(n - window, n))
    assert source != list(range(n - kept, n))
    return source


def test_pruning_that_keeps_every_token_gives_the_unpruned_logits_and_cache(smollm2_path, plain):
    pruned = make(smollm2_path, method="snapkv", ratio=0.5, auto_compress=False, prefill_prune=True, prefill_keep=1.0)
    tokens = prompt_tokens(pruned)
    pruned.eval(tokens)
    assert pruned.prefill_kept == len(tokens) == plain.n_tokens
    np.testing.assert_array_equal(pruned._last_logits(), plain._last_logits())
    for layer in (0, LAYER, LAYER + 1, 29):
        np.testing.assert_array_equal(pruned.cached_keys(layer), plain.cached_keys(layer))
    pruned.close()


def test_later_layers_hold_the_kept_tokens_at_their_own_positions(smollm2_path, plain):
    pruned = make(smollm2_path, method="snapkv", ratio=0.5, auto_compress=False, prefill_prune=True, prefill_keep=0.4)
    tokens = prompt_tokens(pruned)
    pruned.eval(tokens)
    assert pruned.prefill_kept >= 0.4 * len(tokens)
    assert_holds_kept_tokens_at_their_positions(pruned, plain, LAYER + 1, len(tokens))
    pruned.close()


def test_a_prompt_no_longer_than_the_floor_is_not_pruned_and_a_longer_one_keeps_at_least_the_floor(smollm2_path, plain):
    n = plain.n_tokens
    at_floor = make(smollm2_path, method="snapkv", ratio=0.5, auto_compress=False, prefill_prune=True, prefill_keep=0.3,
                    prefill_min_tokens=n)
    at_floor.eval(prompt_tokens(at_floor))
    assert at_floor.prefill_kept is None
    np.testing.assert_array_equal(at_floor._last_logits(), plain._last_logits())
    at_floor.close()
    floor = n - 300  # keep 0.3 alone would drop ~70%; the floor lets 300 go, 256 after the tile rounding
    above = make(smollm2_path, method="snapkv", ratio=0.5, auto_compress=False, prefill_prune=True, prefill_keep=0.3,
                 prefill_min_tokens=floor)
    above.eval(prompt_tokens(above))
    assert above.prefill_kept == n - 256
    assert_holds_kept_tokens_at_their_positions(above, plain, LAYER + 1, n)
    above.close()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen2_and_qwen3_builders_prune_too(tmp_path, arch):
    # random weights (meaningless text): the hook's exactness and positions, not answers
    path = str(write_transformer_gguf(tmp_path / f"{arch}.gguf", arch))
    tokens = [1] + [3 + (7 * i) % 290 for i in range(700)]

    def evaluated(**kwargs):
        llm = pyuncomp.Llama(path, n_ctx=1024, method="snapkv", ratio=0.5, auto_compress=False, verbose=False,
                             prefill_min_tokens=0, **kwargs)
        llm.eval(tokens)
        return llm

    plain = evaluated()
    every = evaluated(prefill_prune=True, prefill_layer=1, prefill_keep=1.0)
    assert every.prefill_kept == len(tokens)
    np.testing.assert_array_equal(every._last_logits(), plain._last_logits())
    pruned = evaluated(prefill_prune=True, prefill_layer=1, prefill_keep=0.3)
    assert_holds_kept_tokens_at_their_positions(pruned, plain, 2, len(tokens))
    for llm in (plain, every, pruned):
        llm.close()


def test_a_wider_pruning_window_ranks_by_its_queries_and_leaves_the_compression_its_own(smollm2_path, plain):
    def pruned_by(prefill_window):
        llm = make(smollm2_path, method="snapkv", ratio=0.5, auto_compress=False, prefill_prune=True, prefill_keep=0.4,
                   prefill_window=prefill_window)
        llm.eval(prompt_tokens(llm))
        return llm, assert_holds_kept_tokens_at_their_positions(llm, plain, LAYER + 1, plain.n_tokens,
                                                                window=max(WINDOW, prefill_window))

    narrow, narrow_kept = pruned_by(4)  # never narrower than the compression's window
    default, default_kept = pruned_by(WINDOW)
    wide, wide_kept = pruned_by(48)
    assert narrow_kept == default_kept and wide_kept != default_kept
    # the pruning layer observed 48 queries to rank by; its compression is scored by the window's 8, as
    # the unpruned evaluation's
    for llm in (narrow, default, wide):
        np.testing.assert_array_equal(llm.window_queries(LAYER), plain.window_queries(LAYER))
        llm.close()


@pytest.mark.parametrize("prefill_window", [WINDOW, 32])
def test_a_prompt_no_longer_than_the_pruning_window_is_evaluated_unpruned(smollm2_path, prefill_window):
    pruned = make(smollm2_path, method="uncomp", ratio=0.5, prefill_prune=True, prefill_window=prefill_window)
    plain = make(smollm2_path, method="uncomp", ratio=0.5)
    for llm in (pruned, plain):
        llm.eval(prompt_tokens(llm)[:prefill_window])
    assert pruned.prefill_kept is None
    np.testing.assert_array_equal(pruned._last_logits(), plain._last_logits())
    out = pruned("The grass", max_tokens=4, temperature=0.0)["choices"][0]["text"]
    assert out == plain("The grass", max_tokens=4, temperature=0.0)["choices"][0]["text"]
    pruned.close()
    plain.close()


# the dropped count is rounded down to whole 256-token tiles: Gemma's ~1.5k-token prompts keep more
@pytest.mark.parametrize("model, most_kept", [("smollm2_path", 0.7), ("gemma3_path", 0.85)])
def test_uncomp_with_a_pruned_prefill_keeps_the_passkey(request, model, most_kept):
    llm = make(request.getfixturevalue(model), method="uncomp", ratio=0.05, prefill_prune=True, prefill_keep=0.5)
    assert passkey_score(llm, depths=(0.1, 0.5, 0.9)) == 3
    assert llm.prefill_kept is not None and llm.prefill_kept < llm.compression_stats()["n_tokens"] * most_kept
    llm.close()


def test_an_interrupted_pruned_prefill_leaves_the_model_usable(smollm2_path):
    llm = make(smollm2_path, method="uncomp", ratio=0.1, prefill_prune=True, n_batch=256)
    tokens = prompt_tokens(llm)

    def stop(done, total):
        if done >= 512:
            raise KeyboardInterrupt

    llm.on_prompt_progress = stop
    with pytest.raises(KeyboardInterrupt):
        llm.eval(tokens)
    assert llm.n_tokens == 0
    llm.on_prompt_progress = None
    llm.eval(tokens)
    fresh = make(smollm2_path, method="uncomp", ratio=0.1, prefill_prune=True, n_batch=256)
    fresh.eval(tokens)
    assert llm.prefill_kept == fresh.prefill_kept
    np.testing.assert_array_equal(llm._last_logits(), fresh._last_logits())
    llm.close()
    fresh.close()


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])  # Gemma: its sliding layers' layouts too
def test_a_saved_pruned_prompt_continues_identically(request, model):
    path = request.getfixturevalue(model)
    llm = make(path, method="uncomp", ratio=0.1, prefill_prune=True)
    prompt = passkey_prompt(60, 0.3, passkey_key(0.3))
    first = llm(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    llm.reset()
    llm.eval(llm.tokenize(prompt.encode()))
    state = llm.save_state()
    other = make(path, method="uncomp", ratio=0.1, prefill_prune=True)
    other.load_state(state)
    again = other(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"]
    assert first == again and passkey_key(0.3) in first
    llm.close()
    other.close()


@pytest.mark.parametrize("kwargs, message", [
    (dict(prefill_prune="yes"), "prefill_prune: must be True or False"),
    (dict(prefill_prune=True, prefill_keep=0.0), r"prefill_keep: must be a fraction in \(0, 1\]"),
    (dict(prefill_prune=True, prefill_keep=1.5), r"prefill_keep: must be a fraction in \(0, 1\]"),
    (dict(prefill_prune=True, prefill_window=0), r"prefill_window: must be an integer in \[1, 4096\]"),
    (dict(prefill_prune=True, prefill_window=4097), r"prefill_window: must be an integer in \[1, 4096\]"),
    (dict(prefill_prune=True, prefill_window=16.0), r"prefill_window: must be an integer in \[1, 4096\]"),
    (dict(prefill_prune=True, prefill_min_tokens=-1), "prefill_min_tokens: must be an integer >= 0"),
    (dict(prefill_prune=True, prefill_min_tokens=1.5), "prefill_min_tokens: must be an integer >= 0"),
    (dict(prefill_prune=True, prefill_layer=-1), "prefill_layer: must be a layer index >= 0"),
    (dict(prefill_prune=True, prefill_layer=29), r"prefill_layer: must be in \[0, 28\] for this 30-layer model"),
    (dict(prefill_prune=True, method="full"), "prefill_prune: needs a compressing method"),
    (dict(prefill_prune=True, logits_all=True), "prefill_prune: needs logits_all=False"),
])
def test_bad_prefill_settings_are_refused(smollm2_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(smollm2_path, **{"method": "uncomp", "ratio": 0.1, **kwargs})


def test_prefill_pruning_names_an_architecture_it_cannot_prune(tmp_path):
    path = str(write_transformer_gguf(tmp_path / "ernie.gguf", "ernie4_5"))  # llama's tensors, its own builder
    with pytest.raises(ValueError, match="prefill_prune: not available for the 'ernie4_5' architecture"):
        pyuncomp.Llama(path, n_ctx=512, method="uncomp", ratio=0.1, prefill_prune=True, verbose=False)


def test_gemma3_prunes_at_a_full_attention_layer_and_its_sliding_layers_see_true_windows(gemma3_path):
    # Gemma 3's layers 0-4, 6-10, 12-16 attend to a 512-token sliding window: the pruning layer is the
    # first full-attention one from a quarter on other than the first (5), whose tokens carry only their
    # window's context, so 11; the sliding layers after it must measure their window in the kept tokens'
    # true positions, not in their cells
    plain = make(gemma3_path, method="snapkv", ratio=0.5, auto_compress=False)
    tokens = prompt_tokens(plain)
    plain.eval(tokens)
    sliding = set(plain.compression_stats()["swa_layers"])
    full = [il for il in range(17) if il not in sliding]
    layer = next(il for il in full[1:] if il >= 18 // 4)
    every = make(gemma3_path, method="snapkv", ratio=0.5, auto_compress=False, prefill_prune=True, prefill_keep=1.0)
    every.eval(tokens)
    assert every.prefill_kept == len(tokens)
    np.testing.assert_array_equal(every._last_logits(), plain._last_logits())
    for il in (5, 6, layer, layer + 1, 17):
        np.testing.assert_array_equal(every.cached_keys(il), plain.cached_keys(il))
    pruned = make(gemma3_path, method="snapkv", ratio=0.5, auto_compress=False, prefill_prune=True, prefill_keep=0.4)
    pruned.eval(tokens)
    assert layer + 1 in sliding and len(tokens) > 2 * 512
    assert_holds_kept_tokens_at_their_positions(pruned, plain, layer + 1, len(tokens))
    # the prompt's next tokens (the key) are predicted as the unpruned model predicts them, step by step
    # (measuring the window in cells instead moved the first of them)
    for token in pruned.tokenize(f" {passkey_key(0.5)}".encode(), add_bos=False):
        assert int(np.argmax(pruned._last_logits())) == int(np.argmax(plain._last_logits()))
        pruned.eval([token])
        plain.eval([token])
    for llm in (plain, every, pruned):
        llm.close()


@pytest.mark.parametrize("kwargs, message", [
    (dict(prefill_layer=4), "prefill_layer: layer 4 is a sliding-window layer; .* full-attention one: 5, 11"),
    (dict(swa_full=False), r"prefill_prune: needs the full-size sliding-window cache of this model \(swa_full=True\)"),
])
def test_gemma3_refuses_what_it_cannot_prune(gemma3_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(gemma3_path, method="uncomp", ratio=0.1, prefill_prune=True, **kwargs)


def test_a_state_loaded_after_a_pruned_gemma3_prompt_keeps_no_layout_of_it(gemma3_path):
    # a pruned prefill gives Gemma's sliding layers a layout; loading an unpruned state (what the
    # evaluation harness does between settings) or a new prompt must not read through it
    plain = make(gemma3_path, method="uncomp", ratio=0.1)
    tokens = prompt_tokens(plain, depth=0.3)
    plain.eval(tokens)
    state = plain.save_state()
    pruned = make(gemma3_path, method="uncomp", ratio=0.1, prefill_prune=True)
    pruned.eval(prompt_tokens(pruned, depth=0.7))
    pruned.load_state(state)
    assert pruned.compression_stats()["tokens_kept"] == plain.compression_stats()["tokens_kept"]
    for llm in (plain, pruned):
        llm.eval([tokens[-1]])
    np.testing.assert_array_equal(pruned._last_logits(), plain._last_logits())
    pruned.reset()
    pruned.eval(pruned.tokenize(b"The sky is")[:WINDOW])  # unpruned: no longer than the window
    fresh = make(gemma3_path, method="uncomp", ratio=0.1)
    fresh.eval(fresh.tokenize(b"The sky is")[:WINDOW])
    np.testing.assert_array_equal(pruned._last_logits(), fresh._last_logits())
    for llm in (plain, pruned, fresh):
        llm.close()


def test_a_loaded_pruned_gemma3_prompt_decodes_into_cells_its_sliding_layers_read(gemma3_path):
    # llama.cpp gives a sliding-window cache's new token an old cell the window masks, searching from the
    # cache's first cell after a state load; the sliding layers after a pruned prefill read only the
    # cells from their kept tokens on, so they missed every decoded token (session 38: the harness's 2k
    # multi-key answers came out as 1333377 -> 1333333). patch 0008 keeps those cells while layouts exist.
    from pyuncomp.eval.tasks import make_samples

    llm = pyuncomp.Llama(gemma3_path, n_ctx=2560, seed=0, verbose=False, method="uncomp", ratio=0.1,
                         auto_compress=False, prefill_prune=True, prefill_keep=0.5)
    sample = make_samples("niah_multikey", 2048, [1.0], 1, 0, lambda t: len(llm.tokenize(t.encode(), add_bos=False)))[0]
    tokens = llm.tokenize(sample.prompt.encode())

    def greedy(first, n=10):
        out = [first]
        while len(out) < n:
            llm.eval([out[-1]])
            out.append(int(np.argmax(llm._last_logits())))
        return llm.detokenize(out).decode()

    llm.eval(tokens)
    assert llm.prefill_kept < len(tokens) and len(tokens) > 2 * 512  # pruned, and well past the sliding window
    first = int(np.argmax(llm._last_logits()))
    state = llm.save_state()
    direct = greedy(first)
    llm.load_state(state)
    assert greedy(first) == direct and sample.answers[0] in direct
    llm.close()
