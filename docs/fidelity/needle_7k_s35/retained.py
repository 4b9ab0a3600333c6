"""How much of the deciding query's attention each head keeps at ratio 0.1 (snapkv's flat split), when
tokens are chosen by the window's attention summed over queries (the engine's score), by its maximum
over queries, or by the lookahead's maximum plus the prompt's mean. The deciding query is the lookahead's
token before the needle's last digit (window row 15: 8 prompt queries, then ": 9479793." decoded over the
full cache). Computed in numpy from the window queries and cached keys (both post-RoPE).

    python retained.py > retained.txt
"""
from needle import evaluated_needle  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np

ev, sample, tokens = evaluated_needle()
llm = ev.llm
llm.set_compression(method="snapkv", ratio=0.1, lookahead=16)
llm._decode_lookahead()  # the window now holds the prompt's 8 queries and the lookahead's
print("lookahead:", repr(llm.detokenize(list(llm.input_ids[len(tokens):llm.n_tokens])).decode()))
N_HEAD_KV, GQA, HEAD_DIM, N_SINK = 3, 3, 64, 4
DECIDING = 8 + 7  # the query at the sixth digit, which predicts the seventh
budget = int(0.1 * len(tokens))
totals = {}
for il in range(30):
    q, k = llm.window_queries(il).astype(np.float64), llm.cached_keys(il).astype(np.float64)
    w, n_all = len(q), len(k)
    # the engine keeps budget + lookahead tokens: the window (prompt + lookahead queries), the sinks, the rest by score
    n_prefix, prefix_budget = n_all - w, budget - 8 - N_SINK
    cells = []
    for kh in range(N_HEAD_KV):
        keys = k[:, kh * HEAD_DIM:(kh + 1) * HEAD_DIM]
        attn = np.zeros((w, GQA, n_all))  # [window query, query head of the group, token]
        for t in range(w):
            for j in range(GQA):
                qh = kh * GQA + j
                logits = keys @ q[t, qh * HEAD_DIM:(qh + 1) * HEAD_DIM] / np.sqrt(HEAD_DIM)
                logits[n_prefix + t + 1:] = -np.inf
                e = np.exp(logits - logits.max())
                attn[t, j] = e / e.sum()
        scores = {"sum": attn.sum((0, 1)), "max": attn.max((0, 1)),
                  "lookahead max": attn[8:].max((0, 1)) + attn[:8].sum((0, 1)) / 8}
        for name, s in scores.items():
            pooled = np.convolve(s[:n_prefix], np.ones(7) / 7, mode="same")
            keep = np.array(sorted(set(np.argsort(-pooled)[:prefix_budget].tolist()) | set(range(N_SINK))
                                   | set(range(n_prefix, n_all))))
            kept = [attn[DECIDING, j][keep].sum() for j in range(GQA)]
            totals.setdefault(name, []).append(kept)
            cells.append(f"{name} " + " ".join(f"{x:.2f}" for x in kept))
    print(f"layer {il}: " + " | ".join(cells))
for name, kept in totals.items():
    kept = np.array(kept).reshape(30, -1)
    print(f"{name}: mean kept {kept.mean():.4f}, layers 5-14 {kept[5:15].mean():.4f}, min {kept.min():.3f}")
