"""Issue #6, sessions 30-31: the rank of each needle digit in a layer's window-attention score (recomputed in
numpy from the observed window queries and cached keys, before compression), unpruned against a pruned
prefill dropping 256 tokens, with the scores pooled over 7 tokens as the engine pools ("avg") or as the
UNComp reference does ("max"). Sample 4 of seed 0's multi-key 2k prompts (answer 1333377).
Run: python copy_head_ranks.py avg 18 20 22; python copy_head_ranks.py max 18 20 22 (output: copy_head_ranks.log)"""
import sys

import numpy as np
import pyuncomp
from common import LLAMA_ARGS, MODEL, VARIANTS, answer_positions, multikey_prompts, nearest_positions

MODE = sys.argv[1]
LAYERS = [int(a) for a in sys.argv[2:]] or [18]
KERNEL = 7  # the engine's pool_kernel
s, toks = multikey_prompts([4])[0]
n = len(toks)
plain = pyuncomp.Llama(MODEL, method="full", **LLAMA_ARGS)
plain.eval(toks)
full = {l: plain.cached_keys(l) for l in LAYERS}
dig = answer_positions(plain, toks, s.answers[0])
plain.close()
for name, extra in VARIANTS:
    m = pyuncomp.Llama(MODEL, method="uncomp", ratio=0.05, **LLAMA_ARGS, **extra)
    m.eval(toks)
    n_held = m.prefill_kept if extra else n  # the pruned layers hold the kept tokens, in the last cells
    heads_kv = m.compression_stats()["tokens_kept"]  # one entry per KV head of each layer
    for l in LAYERS:
        q = m.window_queries(l)  # [w, n_head * hd]
        k = m.cached_keys(l)  # [n, n_head_kv * hd]
        n_head_kv = len(heads_kv[l])
        hd = k.shape[1] // n_head_kv
        g = q.shape[1] // hd // n_head_kv  # query heads per KV head
        w = len(q)
        for h in range(n_head_kv):
            rows = k[n - n_held:, h * hd:(h + 1) * hd]
            T = len(rows)
            logit = np.einsum("wgd,td->wgt", q[:, h * g * hd:(h + 1) * g * hd].reshape(w, g, hd), rows) / np.sqrt(hd)
            for i in range(w):  # causal: window query i (the (T - w + i)-th row) sees the rows up to it
                logit[i, :, T - w + i + 1:] = -np.inf
            p = np.exp(logit - logit.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            windows = np.lib.stride_tricks.sliding_window_view(np.pad(p.sum((0, 1))[:T - w], KERNEL // 2), KERNEL)
            score = windows.max(1) if MODE == "max" else windows.mean(1)
            rank = np.empty(len(score), dtype=int)
            rank[np.argsort(-score)] = np.arange(len(score))
            pos, cos = nearest_positions(rows, full[l][:, h * hd:(h + 1) * hd])
            pos = pos[:T - w]
            ranks = [int(rank[np.flatnonzero(pos == d)[0]]) if (pos == d).any() else None for d in dig]
            print(f"{MODE} {name} layer {l} head {h}: rows {T}, min cos {cos.min():.3f}, digit ranks {ranks}, "
                  f"finite {np.isfinite(rows).all()}")
    m.close()
