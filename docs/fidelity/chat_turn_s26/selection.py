"""The engine's window scoring and selection, recomputed offline from observed queries and cached keys
(post-RoPE, as the engine scores them), for score.py and heads.py."""
import math

import numpy as np


def window_mass(keys, queries, n_head_kv: int, n: int, first_query: int) -> np.ndarray:
    """[n_head_kv, n] attention mass of queries [w, n_head * hd] over the first n of keys [*, n_head_kv * hd]:
    softmax over those keys, summed over each KV head's query heads and the queries. The queries sit at
    positions first_query, first_query + 1, ...: keys after a query's position are masked."""
    hd = keys.shape[1] // n_head_kv
    k = keys[:n].reshape(n, n_head_kv, hd)
    q = queries.reshape(len(queries), -1, hd)
    group = q.shape[1] // n_head_kv
    causal = np.arange(n)[None, :] > (first_query + np.arange(len(q)))[:, None]  # [w, n]
    out = np.zeros((n_head_kv, n))
    for h in range(q.shape[1]):
        s = q[:, h] @ k[:, h // group].T / math.sqrt(hd)
        s[causal] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[h // group] += (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
    return out


def prefix_order(score: np.ndarray, n: int, window: int, pool_kernel: int) -> np.ndarray:
    """The prefix tokens (all but the last window of n), best first, as the engine ranks them: scores
    average-pooled (zero padding), ties by position. A head with budget B keeps the first B - window."""
    pooled = np.convolve(score[: n - window], np.ones(pool_kernel) / pool_kernel, mode="same")
    return np.argsort(-pooled, kind="stable")
