"""The compression engine on SmolLM2-135M: real eviction, real memory, answers kept."""

import os
import random

import numpy as np
import pytest

import pyuncomp
from pyuncomp._native import llama_cpp

N_CTX = 4096


def passkey_prompt(n_filler: int, depth: float, key: str) -> str:
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    parts = [filler] * n_filler
    parts.insert(int(depth * n_filler), f"The pass key is {key}. Remember it. {key} is the pass key. ")
    return ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
            + "".join(parts) + "What is the pass key? The pass key is")


def passkey_key(depth: float, salt: int = 0) -> str:
    """The 5-digit key hidden at depth (seeded by it, and by salt)."""
    return str(random.Random(int(depth * 100) + salt).randint(10000, 99999))


def passkey_score(llm, n_filler=90, depths=(0.1, 0.3, 0.5, 0.7, 0.9)):
    hits = 0
    for depth in depths:
        key = passkey_key(depth)
        out = llm(passkey_prompt(n_filler, depth, key), max_tokens=8, temperature=0.0)["choices"][0]["text"]
        hits += key in out
    return hits


@pytest.fixture(scope="module")
def engines(smollm2_path):
    made = {}

    def get(method, ratio):
        if (method, ratio) not in made:
            made[method, ratio] = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method=method, ratio=ratio,
                                                 seed=0, verbose=False)
        return made[method, ratio]

    yield get
    for llm in made.values():
        llm.close()


def test_snapkv_keeps_the_passkey_at_2k_like_the_full_cache(engines):
    full = passkey_score(engines("full", 1.0))
    snap = passkey_score(engines("snapkv", 0.1))
    assert full >= 4
    assert snap >= full


def test_streamingllm_loses_a_needle_outside_sinks_and_recent_tokens(engines):
    # a control: the same budget without scoring cannot see the middle of the prompt
    assert passkey_score(engines("streamingllm", 0.1), depths=(0.3, 0.5, 0.7)) == 0


def test_uncomp_keeps_the_passkey_at_2k_like_the_full_cache_and_snapkv(engines):
    full = passkey_score(engines("full", 1.0))
    snap = passkey_score(engines("snapkv", 0.05))
    uncomp = passkey_score(engines("uncomp", 0.05))
    assert full >= 4
    assert uncomp >= full and uncomp >= snap


@pytest.mark.parametrize("cache_type", ["q8_0", "q4_0"])
def test_uncomp_over_a_quantized_cache_keeps_the_passkey_and_its_bytes(smollm2_path, cache_type):
    type_id = {"q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}[cache_type]
    llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="uncomp", ratio=0.05, flash_attn=True,
                         type_k=type_id, type_v=type_id, seed=0, verbose=False)
    try:
        assert passkey_score(llm, depths=(0.3, 0.7)) == 2
        stats = llm.compression_stats()
        # a row of one head is 64 values: 2 blocks of 32, 34 bytes each (q8_0) or 18 (q4_0), for K and V
        block_bytes = {"q8_0": 34, "q4_0": 18}[cache_type]
        assert stats["kv_bytes"] == sum(map(sum, stats["tokens_kept"])) * 2 * 2 * block_bytes
        assert stats["kv_bytes"] <= 0.06 * stats["kv_bytes_full"]
    finally:
        llm.close()


@pytest.mark.parametrize("method", ["snapkv", "streamingllm", "pyramidkv", "uncomp"])
def test_cache_really_shrinks_to_the_budget(engines, method):
    llm = engines(method, 0.05)
    llm.reset()
    llm.eval(llm.tokenize(passkey_prompt(90, 0.5, "12345").encode()))
    stats = llm.compression_stats()
    n = stats["n_tokens"]
    budget = round(0.05 * n)
    kept = stats["tokens_kept"]
    assert n > 2000
    if method in ("snapkv", "streamingllm"):
        assert kept == [[budget] * 3] * 30
    else:
        assert len({k for layer in kept for k in layer}) > 3  # budgets differ by layer (and head)
    # the average over layers and heads is the budget; bytes are the rows held: 64 K + 64 V halves per head
    assert sum(map(sum, kept)) == budget * 90
    assert stats["kv_bytes"] == sum(map(sum, kept)) * 2 * 64 * 2
    assert stats["kv_bytes"] <= (0.05 + 0.01) * stats["kv_bytes_full"]


def test_flash_attention_on_and_off_agree_over_per_head_budgets(smollm2_path):
    # two attention implementations (transposed V without flash attention) over the same per-head views;
    # they sum in different orders, so only the answer is compared (a near tie may flip a later token)
    prompt = passkey_prompt(60, 0.4, "24680")
    texts = []
    for flash_attn in (False, True):
        llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="uncomp", ratio=0.05, flash_attn=flash_attn,
                             verbose=False)
        texts.append(llm(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"])
        heads = llm.compression_stats()["tokens_kept"]
        assert any(len(set(layer)) > 1 for layer in heads)
        llm.close()
    assert texts[0] == texts[1] and "24680" in texts[0]


def test_layers_spanning_different_rows_decode_a_token_as_a_batch_does(smollm2_path):
    # uncomp's layer pyramid at a larger ratio: layers' first held rows lie whole 256-row tiles apart, so
    # each layer's attention views its own rows and mask; a chunk evaluated token by token (the decode
    # path) must give the logits the same chunk gives as one batch
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from chunk_probe import chunk_logits

    llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="uncomp", ratio=0.3, flash_attn=True, shrink_cache=False,
                         verbose=False)
    llm.eval(llm.tokenize(passkey_prompt(90, 0.5, "97531").encode()))
    first_rows = {int(start.min()) // 256 for start in llm._head_starts().values()}
    assert len(first_rows) > 1, first_rows
    batched, single = chunk_logits(llm, llm.tokenize(b" Say it again: the pass key is", add_bos=False))
    llm.close()
    assert np.all(np.isfinite(single)) and batched.argmax() == single.argmax()
    np.testing.assert_allclose(single, batched, atol=1e-3)


def test_generation_appends_after_compression_and_positions_continue(engines):
    llm = engines("snapkv", 0.05)
    out = llm(passkey_prompt(90, 0.5, "55555"), max_tokens=6, temperature=0.0)
    stats = llm.compression_stats()
    n_prompt = out["usage"]["prompt_tokens"]
    generated = stats["n_tokens"] - n_prompt
    assert 0 <= generated <= 6
    assert stats["tokens_kept"][0] == [round(0.05 * n_prompt) + generated] * 3


@pytest.mark.parametrize("method", ["snapkv", "uncomp"])
def test_a_continuation_shorter_than_the_window_is_compressed_by_its_own_queries(engines, method):
    # a few tokens evaluated after a compressed prompt (a short new turn, llama-cpp-python's evaluation of
    # a prompt that extends the cached one): fewer queries than the window were observed. It used to raise
    # LLAMA_UNCOMP_ERR_NO_QUERIES; the few queries score the sequence now, and the budget holds
    llm = engines(method, 0.1)
    llm.reset()
    llm.eval(llm.tokenize(passkey_prompt(60, 0.5, "27182").encode()))
    tail = llm.tokenize(b" The pass key is 2", add_bos=False)
    assert 1 < len(tail) < llm.compression.window
    llm.eval(tail)
    stats = llm.compression_stats()
    budget = round(0.1 * stats["n_tokens"])
    assert stats["n_tokens"] == llm.n_tokens
    assert sum(map(sum, stats["tokens_kept"])) == budget * 90


@pytest.mark.parametrize("method", ["snapkv", "uncomp"])
def test_a_new_turn_is_appended_then_recompressed(engines, method):
    llm = engines(method, 0.1)
    first = passkey_prompt(60, 0.5, "31415")
    llm(first, max_tokens=4, temperature=0.0)
    # the second prompt extends the first: llama-cpp-python evaluates only the new tokens
    second = first + " 31415.\nNow repeat it: the pass key is"
    out = llm(second, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert "31415" in out
    stats = llm.compression_stats()
    held = sum(map(sum, stats["tokens_kept"])) / 90
    assert held <= round(0.1 * stats["n_tokens"]) + 8


@pytest.mark.parametrize("new_turns", ["reevaluate", "recall"])
def test_new_turns_answer_a_turn_as_a_fresh_evaluation_of_the_whole_chat(smollm2_path, new_turns, monkeypatch):
    """new_turns="reevaluate" (the history evaluated again) and "recall" (the whole cache copied at the
    last compression, restored): a chat's second turn is compressed scored by the new question from
    the whole history, so it answers as a model given the whole chat at once; recall evaluates only
    the tokens since the copy."""
    doc = passkey_prompt(60, 0.3, "27364")
    turn1 = [{"role": "user", "content": doc.rsplit("What is", 1)[0] + "Say OK."}]
    kwargs = dict(n_ctx=N_CTX, method="uncomp", ratio=0.05, seed=0, verbose=False)
    llm = pyuncomp.Llama(smollm2_path, new_turns=new_turns, **kwargs)
    fresh = pyuncomp.Llama(smollm2_path, share_model_with=llm, **kwargs)
    try:
        a1 = llm.create_chat_completion(turn1, max_tokens=4, temperature=0.0)["choices"][0]["message"]
        n_turn1 = llm.compression_stats()["n_tokens"]
        assert (llm.compression_stats()["recall_bytes"] > 0) == (new_turns == "recall")
        evaluated = []
        parent_eval = llama_cpp.Llama.eval
        monkeypatch.setattr(llama_cpp.Llama, "eval", lambda self, tokens: (evaluated.append(len(tokens)), parent_eval(self, tokens))[1])
        turn2 = turn1 + [a1, {"role": "user", "content": "What is the pass key?"}]
        got = llm.create_chat_completion(turn2, max_tokens=10, temperature=0.0)["choices"][0]["message"]["content"]
        monkeypatch.undo()
        want = fresh.create_chat_completion(turn2, max_tokens=10, temperature=0.0)["choices"][0]["message"]["content"]
        assert got == want
        # the tokens evaluated for the second turn (its prompt, then one per generated token)
        assert (sum(evaluated) > n_turn1) == (new_turns == "reevaluate")
        stats = llm.compression_stats()
        assert stats["kv_bytes"] < stats["kv_bytes_full"] / 5  # compressed again after the turn
        if new_turns == "recall":  # the copy is the whole cache of the history so far
            assert stats["recall_bytes"] > stats["kv_bytes_full"] * (stats["n_tokens"] - 10) / stats["n_tokens"]
        with pytest.raises(ValueError, match="new_turns: must be one of 'append', 'reevaluate', 'recall'"):
            llm.new_turns = "recompute"
    finally:
        fresh.close()
        llm.close()


@pytest.mark.parametrize("follow_up", ["one_more_token", "rewound"])
def test_recall_answers_a_prompt_that_adds_one_token_or_rewinds_as_a_fresh_evaluation(smollm2_path, follow_up, monkeypatch):
    """A prompt whose uncached part is one token (the next message of a completion client, or a prompt
    that stops inside the compressed history) is a new turn too: recall restores the whole cache, evaluates
    at least the window again and compresses scored by it, as a fresh evaluation of the prompt does (it
    used to be decoded over the last prompt's compressed cache)."""
    kwargs = dict(n_ctx=N_CTX, method="uncomp", ratio=0.05, seed=0, verbose=False)
    llm = pyuncomp.Llama(smollm2_path, new_turns="recall", **kwargs)
    fresh = pyuncomp.Llama(smollm2_path, share_model_with=llm, **kwargs)
    try:
        first = llm.tokenize(passkey_prompt(60, 0.3, "27364").encode())
        llm.create_completion(first, max_tokens=4, temperature=0.0)
        assert llm.compression_stats()["recall_bytes"] > 0
        newline = llm.tokenize(b"\n", add_bos=False, special=False)
        assert len(newline) == 1
        prompt = first + newline if follow_up == "one_more_token" else first[:-3]
        evaluated = []
        parent_eval = llama_cpp.Llama.eval
        monkeypatch.setattr(llama_cpp.Llama, "eval", lambda self, tokens: (evaluated.append(len(tokens)), parent_eval(self, tokens))[1])
        got = llm.create_completion(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
        monkeypatch.undo()
        assert evaluated[0] >= llm.compression.window  # the window again, not one token over the old cache
        stats = llm.compression_stats()
        assert stats["kv_bytes"] < stats["kv_bytes_full"] / 5  # compressed at the new prompt
        assert got == fresh.create_completion(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    finally:
        fresh.close()
        llm.close()


def test_a_diverging_prompt_gives_what_a_fresh_evaluation_gives(engines):
    llm = engines("snapkv", 0.1)
    other = passkey_prompt(60, 0.5, "99991")
    llm.reset()
    fresh = llm(other, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    # shares a long prefix with `other` but holds another key: after its compression, `other`
    # diverges inside the compressed history and must be evaluated again from the start
    llm(passkey_prompt(60, 0.5, "27182"), max_tokens=4, temperature=0.0)
    assert llm(other, max_tokens=8, temperature=0.0)["choices"][0]["text"] == fresh


def test_gemma3_compresses_its_global_layers_and_keeps_the_sliding_ones(gemma3_path):
    full = pyuncomp.Llama(gemma3_path, n_ctx=N_CTX, verbose=False)
    snap = pyuncomp.Llama(gemma3_path, n_ctx=N_CTX, method="snapkv", ratio=0.1, lookahead=16, verbose=False)
    full_hits = passkey_score(full)
    snap_hits = passkey_score(snap)
    assert snap_hits >= full_hits
    f, s = full.compression_stats(), snap.compression_stats()
    assert s["lookahead_tokens"] > 0  # llama-cpp-python's default full-size sliding-window cache rewinds
    assert f["swa_layers"] == s["swa_layers"] and len(s["swa_layers"]) > 0
    for layer, kept_full, kept_snap in zip(s["layers"], f["tokens_kept"], s["tokens_kept"]):
        if layer in s["swa_layers"]:
            assert kept_snap == kept_full  # sliding-window layers untouched
        else:
            assert kept_snap[0] <= round(0.1 * s["n_tokens"]) + 8 < kept_full[0]
    full.close()
    snap.close()
    # a window-sized sliding cache reuses the cells its window left: no lookahead is decoded into it
    small = pyuncomp.Llama(gemma3_path, n_ctx=N_CTX, method="snapkv", ratio=0.1, lookahead=16, swa_full=False,
                           verbose=False)
    small(passkey_prompt(30, 0.5, "12345"), max_tokens=4, temperature=0.0)
    assert small.compression_stats()["lookahead_tokens"] == 0
    small.close()


@pytest.mark.parametrize("method", ["snapkv", "uncomp"])
def test_saved_compressed_state_continues_identically(engines, method):
    llm = engines(method, 0.1)
    prompt = passkey_prompt(60, 0.3, "16180")
    llm.reset()
    llm(prompt, max_tokens=1, temperature=0.0)
    state = llm.save_state()
    kept = llm.compression_stats()["tokens_kept"]
    first = llm(prompt, max_tokens=12, temperature=0.0)["choices"][0]["text"]
    # disturb the cache with another prompt, then restore
    llm(passkey_prompt(60, 0.6, "00000"), max_tokens=4, temperature=0.0)
    llm.load_state(state)
    assert llm.compression_stats()["tokens_kept"] == kept
    assert llm(prompt, max_tokens=12, temperature=0.0)["choices"][0]["text"] == first


def test_shrunk_cache_releases_its_allocation_and_answers_the_same(smollm2_path):
    """shrink_cache rebuilds the context around the kept cells after compression and grows it back
    when generation needs more: same greedy text as without it, a fraction of the allocation."""
    runs = {}
    for shrink in (False, True):
        llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="uncomp", ratio=0.05, shrink_cache=shrink,
                             seed=0, verbose=False)
        try:
            # 600 generated tokens outgrow the n_batch (512) cells of room left after the shrink
            text = llm(passkey_prompt(90, 0.3, "53812"), max_tokens=600, temperature=0.0)["choices"][0]["text"]
            after_generation = llm.compression_stats()
            msgs = [{"role": "user", "content": passkey_prompt(60, 0.5, "11223")}]
            a1 = llm.create_chat_completion(messages=msgs, max_tokens=12, temperature=0.0)
            msgs += [a1["choices"][0]["message"], {"role": "user", "content": "What is the pass key?"}]
            a2 = llm.create_chat_completion(messages=msgs, max_tokens=12, temperature=0.0)
            runs[shrink] = (text, a1["choices"][0]["message"]["content"], a2["choices"][0]["message"]["content"],
                            after_generation, llm.compression_stats(), llm.n_ctx())
        finally:
            llm.close()
    assert runs[True][:3] == runs[False][:3]
    assert "53812" in runs[True][0]
    full_alloc = runs[False][4]["kv_bytes_allocated"]
    per_cell = full_alloc // N_CTX
    for stats in (runs[True][3], runs[True][4]):
        assert stats["kv_bytes_allocated"] < full_alloc / 2
        assert stats["kv_bytes_allocated"] >= stats["kv_bytes"]
    # after the chat the context holds the compressed history plus one batch of room, in 256-cell steps
    kept_cells = max(max(layer) for layer in runs[True][4]["tokens_kept"])
    assert runs[True][4]["kv_bytes_allocated"] <= (kept_cells + 512 + 256) * per_cell
    assert runs[True][5] == N_CTX  # n_ctx() stays what was asked for


def test_a_shrunk_cache_grows_as_often_as_a_long_generation_needs(smollm2_path):
    """Tokens appended one at a time to a shrunk cache grow it again and again (a small n_batch leaves
    little room each time); every growth must count the token it makes room for, or the next one
    comes a token late and llama_decode finds no cell. The logits match an unshrunk cache's."""
    logits = {}
    for shrink in (False, True):
        llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="snapkv", ratio=0.2, n_batch=64, flash_attn=True, shrink_cache=shrink,
                             seed=0, verbose=False)
        try:
            prompt = llm.tokenize(passkey_prompt(20, 0.5, "48151").encode())
            llm.eval(prompt)
            sizes = {llm._ctx.n_ctx()}
            for i in range(700):
                llm.eval([prompt[50 + i % 200]])
                sizes.add(llm._ctx.n_ctx())
            logits[shrink] = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
            if shrink:
                assert len(sizes) >= 4, sizes  # shrunk, then grown at least twice
        finally:
            llm.close()
    assert np.allclose(logits[True], logits[False], atol=1e-3)


def test_a_fitted_cache_allocates_only_the_rows_its_layers_hold_and_answers_the_same(smollm2_path):
    """With flash attention a shrunk cache is fitted to the compressed layout: a layer whose heads keep
    fewer tokens allocates fewer rows, its unused rows lying on other layers' memory. Generation that
    grows it, a next chat turn (compressed again), an explicit compress(), and a saved state loaded into
    another session give the same greedy text as an unfitted cache, and the engine refuses to compact a
    fitted cache or to give a head rows below its layer's memory."""
    from pyuncomp._native import ffi, lib
    from pyuncomp.policies import UNComp

    prompt = passkey_prompt(90, 0.3, "53812")
    runs = {}
    for shrink in (False, True):
        # ratio 0.2 and n_batch 256: layers' first rows (up to ~600) beyond the free cells kept after the
        # kept ones, so unallocated rows lie on other layers' held rows, not only on their free ones
        kwargs = dict(n_ctx=N_CTX, n_batch=256, method="uncomp", ratio=0.2, shrink_cache=shrink, flash_attn=True,
                      seed=0, verbose=False)
        llm = pyuncomp.Llama(smollm2_path, **kwargs)
        other = pyuncomp.Llama(smollm2_path, **kwargs, share_model_with=llm)
        for model in (llm, other):  # a steep layer pyramid spreads the layers' first rows that far
            model.policy = UNComp(beta=4.0)
        try:
            out = [llm(prompt, max_tokens=600, temperature=0.0)["choices"][0]["text"]]  # outgrows the shrunk cells
            grown = llm.compression_stats()
            llm.compress()  # the prompt's window again, over the generated tokens too
            out.append(llm(prompt + out[0], max_tokens=8, temperature=0.0)["choices"][0]["text"])
            msgs = [{"role": "user", "content": passkey_prompt(60, 0.5, "11223")}]
            a1 = llm.create_chat_completion(messages=msgs, max_tokens=12, temperature=0.0)["choices"][0]["message"]
            state, chat_stats = llm.save_state(), llm.compression_stats()
            msgs += [a1, {"role": "user", "content": "What is the pass key?"}]
            out += [a1["content"], llm.create_chat_completion(messages=msgs, max_tokens=12, temperature=0.0)
                    ["choices"][0]["message"]["content"]]
            other.load_state(state)
            out.append(other.create_chat_completion(messages=msgs, max_tokens=12, temperature=0.0)
                       ["choices"][0]["message"]["content"])
            loaded = other.compression_stats()
            if shrink:
                ctx = llm._ctx_ptr()
                assert lib.llama_uncomp_compress(ctx, 0) == lib.LLAMA_UNCOMP_ERR_FITTED
                layer = max(llm._layer_stats(0), key=lambda s: s["first_row"])
                below = np.zeros(layer["n_head_kv"], dtype=np.uint32)
                assert lib.llama_uncomp_set_head_start(ctx, 0, layer["il"], ffi.cast("uint32_t *", below.ctypes.data),
                                                       below.size) == lib.LLAMA_UNCOMP_ERR_FITTED
                layers, starts, n_cells = other._layer_stats(0), other._head_starts(), other._ctx.n_ctx()
            runs[shrink] = (out, grown, chat_stats, loaded)
        finally:
            other.close()
            llm.close()
    assert runs[True][0] == runs[False][0]
    assert "53812" in runs[True][0][0]
    for stats in runs[True][1:]:
        assert stats["fitted"], stats
        assert stats["kv_bytes"] <= stats["kv_bytes_allocated"]
    assert not any(stats["fitted"] for stats in runs[False][1:])
    # each layer holds the rows from its heads' first start on: what it allocates, where unfitted it
    # would allocate every cell of the context
    assert [s["first_row"] for s in layers] == [int(min(starts.get(s["il"], [0]))) for s in layers]
    assert max(s["first_row"] for s in layers) > n_cells - max(max(kept) for kept in runs[True][3]["tokens_kept"])
    assert runs[True][3]["kv_bytes_allocated"] == sum((n_cells - s["first_row"]) * s["bytes_per_token"] for s in layers)


def test_a_session_loading_a_compressed_prompt_never_allocates_the_full_cache(smollm2_path):
    """A shrinking model starts with n_batch cells and grows to what it is given: a second session that
    loads the first one's compressed state allocates about what the state holds (the many-sessions
    case), and answers as the first one does."""
    first = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="snapkv", ratio=0.05, seed=0, verbose=False)
    second = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="snapkv", ratio=0.05, seed=0, verbose=False,
                            share_model_with=first)
    try:
        per_cell = first.compression_stats()["kv_bytes_allocated"] // first._ctx.n_ctx()
        assert first._ctx.n_ctx() == 512 and first.n_ctx() == N_CTX  # n_batch cells until a prompt comes
        prompt = passkey_prompt(150, 0.4, "60817")  # ~3.6k tokens: the cache grows for it, then shrinks
        first.eval(first.tokenize(prompt.encode()))
        state, held = first.save_state(), first.compression_stats()["kv_bytes"]
        want = first.create_completion(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"]
        second.load_state(state)
        loaded = second.compression_stats()
        assert loaded["kv_bytes"] == held
        assert loaded["kv_bytes_allocated"] <= 512 * per_cell < loaded["kv_bytes_full"] / 4
        got = second.create_completion(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"]
        assert got == want and "60817" in got
    finally:
        second.close()
        first.close()


@pytest.mark.parametrize("model, method, cache", [("smollm2-135m", "uncomp", "f16"), ("smollm2-135m", "snapkv", "q8_0"),
                                                  ("gemma3-270m", "uncomp", "f16")])
def test_device_path_keeps_what_the_host_path_keeps(tmp_path, smollm2_path, gemma3_path, model, method, cache):
    """The graph-based steps that run where the cache lives (on a GPU for CUDA caches) forced onto the
    CPU backend: the same prompt keeps the same rows, bit for bit, with the same entropy profile."""
    import subprocess
    import sys
    from pathlib import Path

    probe = Path(__file__).resolve().parent.parent / "tools" / "compress_probe.py"
    runs = {}
    for name, forced in (("host", "0"), ("device", "1")):
        runs[name] = tmp_path / f"{name}.npz"
        subprocess.run([sys.executable, str(probe), str(runs[name]), "--model", model, "--method", method,
                        "--cache", cache], check=True, env={**os.environ, "UNCOMP_DEVICE_PATH": forced})
    r = subprocess.run([sys.executable, str(probe), "--compare", str(runs["host"]), str(runs["device"])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "equal" in r.stdout


@pytest.mark.parametrize("method", ["snapkv", "uncomp"])
def test_a_repeated_prompt_answers_as_the_first_time(smollm2_path, method):
    """llama-cpp-python answers a repeated prompt by replaying its last token over the cache; over a
    compressed cache that token's logits differ. The compressed prompt's own logits are reused."""
    colors, animals = ["red", "green", "blue", "white", "black", "gray", "brown"], ["cat", "dog", "bird", "fish", "horse"]
    document = " ".join(f"Item {i} is a {colors[i % 7]} {animals[i % 5]}." for i in range(90))
    messages = [{"role": "user", "content": document + "\nWhat animal is item 12?"}]
    llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method=method, ratio=0.05, seed=0, verbose=False)
    answers = [llm.create_chat_completion(messages, max_tokens=16, temperature=0.0)["choices"][0]["message"]["content"]
               for _ in range(2)]
    llm.close()
    assert answers[1] == answers[0]


def test_two_models_in_threads_answer_as_each_alone(smollm2_path):
    """Native state is per context (and per cache tensor): two compressing models decoding at the same
    time in two threads give what each gives alone."""
    import threading

    prompts = [passkey_prompt(30, 0.3, "51846") + " The pass key is", passkey_prompt(35, 0.7, "90317") + " The pass key is"]
    llms = [pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method=m, ratio=0.05, n_threads=1, seed=0, verbose=False)
            for m in ("uncomp", "snapkv")]

    def answer(i):
        return llms[i].create_completion(prompts[i], max_tokens=16, temperature=0.0)["choices"][0]["text"]

    alone = [answer(0), answer(1)]
    for llm in llms:
        llm.reset()
    together = [None, None]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, answer(i))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for llm in llms:
        llm.close()
    assert together == alone


def test_a_lookahead_that_evicts_nothing_answers_as_no_lookahead(smollm2_path):
    # the lookahead's tokens are decoded over the full cache, then dropped: with a budget that keeps
    # every token, the answer (sampled from the prompt's own logits) and the positions are unchanged
    prompt = passkey_prompt(60, 0.4, "62831")
    runs = {}
    for lookahead in (0, 16):
        llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="snapkv", budget=N_CTX, lookahead=lookahead,
                             seed=0, verbose=False)
        out = llm(prompt, max_tokens=12, temperature=0.0)
        stats = llm.compression_stats()
        runs[lookahead] = (out["choices"][0]["text"], llm.n_evaluated, stats["n_tokens"], stats["lookahead_tokens"])
        llm.close()
    assert runs[16][0] == runs[0][0] and "62831" in runs[0][0]
    assert runs[16][2] == runs[0][2]
    assert runs[0][3] == 0 and runs[16][3] > 0
    # the lookahead was decoded (a plain step for each token but the last), then evaluated as one batch
    assert runs[16][1] == runs[0][1] + 2 * runs[16][3] - 1


def test_the_lookahead_observes_the_greedy_answer_at_its_positions(smollm2_path):
    # the window queries a compression with lookahead scores by: the prompt's last 8, then those of the
    # full cache's greedy continuation, as an evaluation of prompt and continuation together observes them
    prompt = passkey_prompt(60, 0.4, "62831")
    llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="snapkv", ratio=0.1, lookahead=16, auto_compress=False,
                         seed=0, verbose=False)
    tokens = llm.tokenize(prompt.encode())
    llm.eval(tokens)
    prompt_queries, _ = llm._decode_lookahead()
    k = llm.lookahead_tokens
    continuation = [int(t) for t in llm._input_ids[len(tokens): len(tokens) + k]]
    observed = {il: llm.window_queries(il) for il in (0, 29)}
    llm._drop_lookahead(len(tokens), prompt_queries)
    answer = llm(prompt, max_tokens=k, temperature=0.0)["choices"][0]["text"]  # compressed: its start only
    assert k == 16 and llm.detokenize(continuation).decode().startswith(answer[:6]) and "62831" in answer
    together = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method="snapkv", ratio=0.1, window=8 + k,
                              auto_compress=False, verbose=False)
    together.eval(tokens + continuation)
    for il, q in observed.items():
        assert q.shape == (8 + k, together.window_queries(il).shape[1])
        np.testing.assert_allclose(q, together.window_queries(il), rtol=1e-3, atol=1e-3)
    llm.close()
    together.close()


@pytest.mark.parametrize("method", ["snapkv", "uncomp"])
def test_a_lookahead_scores_the_prefix_then_leaves_the_prompt_as_it_was(smollm2_path, method):
    # budgets, window queries and the first answer token are the prompt's; only the selection changes
    prompt = passkey_prompt(60, 0.4, "62831")
    kept_keys = {}
    for lookahead in (0, 16):
        llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method=method, ratio=0.1, lookahead=lookahead,
                             auto_compress=False, seed=0, verbose=False)
        tokens = llm.tokenize(prompt.encode())
        llm.eval(tokens)
        queries = {il: llm.window_queries(il) for il in (0, 29)}
        plain = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, method=method, ratio=0.1, lookahead=0, seed=0, verbose=False)
        plain.eval(tokens)
        llm.compress()
        stats, plain_stats = llm.compression_stats(), plain.compression_stats()
        assert llm.n_tokens == stats["n_tokens"] == len(tokens)
        assert stats["tokens_kept"] == plain_stats["tokens_kept"]  # the lookahead is not in the budgets
        for il, q in queries.items():
            np.testing.assert_array_equal(llm.window_queries(il), q)
        kept_keys[lookahead] = llm.cached_keys(29)
        # the next token is sampled from the prompt's logits, not from the lookahead's last
        assert llm.sample(temp=0.0) == plain.sample(temp=0.0)
        llm.close()
        plain.close()
    assert kept_keys[16].shape == kept_keys[0].shape and not np.array_equal(kept_keys[16], kept_keys[0])
