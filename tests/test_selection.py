"""The engine keeps, per KV head, exactly the tokens a numpy reference of SnapKV scoring picks, for
every policy's per-layer and per-head budgets."""

import numpy as np
import pytest

import pyuncomp

N_HEAD, N_HEAD_KV, HEAD_DIM = 9, 3, 64  # SmolLM2-135M
TEXT = ("Alice keeps her spare key under the blue flowerpot by the door. The weather was mild and the "
        "market was busy with people buying bread, apples and cheese. ") * 10 + "Where is the spare key?"


def reference_kept(keys, queries, budgets, window, pool_kernel, n_sink):
    """Indices kept by each KV head (budgets[h] tokens): window softmax attention summed over the window and the query
    heads of the KV head, average-pooled over the prefix, top (budget - window - n_sink), + sinks + window."""
    n = len(keys)
    w = len(queries)
    kept = []
    for kh in range(N_HEAD_KV):
        k = keys[:, kh * HEAD_DIM:(kh + 1) * HEAD_DIM].astype(np.float64)
        score = np.zeros(n)
        for qh in range(kh * (N_HEAD // N_HEAD_KV), (kh + 1) * (N_HEAD // N_HEAD_KV)):
            q = queries[:, qh * HEAD_DIM:(qh + 1) * HEAD_DIM].astype(np.float64)
            logits = q @ k.T / np.sqrt(HEAD_DIM)
            logits[np.triu(np.ones((w, n), bool), k=n - w + 1)] = -np.inf  # causal
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            score += (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
        prefix = score[: n - w]
        pooled = np.convolve(prefix, np.ones(pool_kernel), mode="same") / pool_kernel
        candidates = np.arange(n_sink, n - w)
        order = candidates[np.argsort(-pooled[n_sink:], kind="stable")]
        top = np.sort(order[: budgets[kh] - w - n_sink])
        kept.append(np.concatenate([np.arange(n_sink), top, np.arange(n - w, n)]))
    return kept


def mismatched_heads(full, compressed_llm, layers, window, pool_kernel, n_sink):
    """KV heads (over the given layers) whose kept key rows differ from the numpy reference."""
    stats = compressed_llm.compression_stats()
    mismatched = 0
    for layer in layers:
        keys = full.cached_keys(layer)
        queries = compressed_llm.window_queries(layer)
        assert queries.shape == (window, N_HEAD * HEAD_DIM)
        compressed = compressed_llm.cached_keys(layer)
        budgets = stats["tokens_kept"][stats["layers"].index(layer)]
        # the sequence holds as many cells as the largest budget of any layer and head
        assert compressed.shape == (max(map(max, stats["tokens_kept"])), N_HEAD_KV * HEAD_DIM)
        for kh, idx in enumerate(reference_kept(keys, queries, budgets, window, pool_kernel, n_sink)):
            sl = slice(kh * HEAD_DIM, (kh + 1) * HEAD_DIM)
            # head kh holds the last budgets[kh] rows: the same keys, row for row, in the same order
            mismatched += int(not np.array_equal(compressed[len(compressed) - budgets[kh]:, sl], keys[idx, sl]))
    return mismatched


@pytest.mark.parametrize("window, pool_kernel, n_sink", [(8, 5, 0), (16, 7, 4), (4, 1, 0)])
def test_snapkv_selection_matches_numpy(smollm2_path, window, pool_kernel, n_sink):
    full = pyuncomp.Llama(smollm2_path, n_ctx=2048, verbose=False)
    snap = pyuncomp.Llama(smollm2_path, n_ctx=2048, method="snapkv", ratio=0.2, window=window,
                          pool_kernel=pool_kernel, n_sink=n_sink, verbose=False)
    tokens = full.tokenize(TEXT.encode())
    full.eval(tokens)
    snap.eval(tokens)
    assert snap.compression_stats()["tokens_kept"][0] == [round(0.2 * len(tokens))] * N_HEAD_KV
    assert mismatched_heads(full, snap, (0, 5, 14, 29), window, pool_kernel, n_sink) == 0
    full.close()
    snap.close()


@pytest.mark.parametrize("method", ["pyramidkv", "uncomp"])
def test_per_layer_and_per_head_selection_matches_numpy(smollm2_path, method):
    full = pyuncomp.Llama(smollm2_path, n_ctx=2048, verbose=False)
    llm = pyuncomp.Llama(smollm2_path, n_ctx=2048, method=method, ratio=0.2, verbose=False)
    tokens = full.tokenize(TEXT.encode())
    full.eval(tokens)
    llm.eval(tokens)
    kept = np.array(llm.compression_stats()["tokens_kept"])
    assert len(np.unique(kept)) > 3  # budgets really differ between layers (and heads, for uncomp)
    cfg = llm.compression
    assert mismatched_heads(full, llm, range(0, 30, 3), cfg.window, cfg.pool_kernel, cfg.n_sink) == 0
    full.close()
    llm.close()
