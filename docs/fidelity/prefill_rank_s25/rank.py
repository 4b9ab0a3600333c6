"""Which tokens should a pruned prefill keep? (issue #6). A pruned prefill's later layers run on the half of
the prompt that layer L's window attention ranks highest; when a needle is not in that half, no later layer
can find it (docs/fidelity.md, "Prefill pruning"). This scores rankings offline: each prompt is evaluated
once, unpruned, and each layer's window attention is recomputed from its observed window queries and
cached keys (post-RoPE, as the engine scores them: softmax over every key, summed over query heads and
window queries, average-pooled, window and sinks forced in). For each ranking it records whether every
token of each needle's value (the answer) is among the tokens a pruned prefill would keep, and how many
of its key's tokens (the words that tie it to the question) are.

    python docs/fidelity/prefill_rank_s25/rank.py OUT.json [--seeds 0 1] [--keep 0.5] [--layer 7]
"""
import argparse
import json
import math
import time

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import make_samples

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
ap.add_argument("--tasks", nargs="+", default=["passkey", "niah_multikey", "niah_multivalue"])
ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
ap.add_argument("--keep", type=float, default=0.5)
ap.add_argument("--layer", type=int, default=7, help="the pruning layer (SmolLM2's default: n_layer // 4)")
args = ap.parse_args()

ev = Evaluator(str(pyuncomp.resolve_model(None)), n_ctx=-(-(int(max(args.lengths) * 1.05) + 256) // 256) * 256,
               n_threads=2)
llm = ev.llm
cfg = llm.compression


def layer_mass(il: int, n_head_kv: int) -> np.ndarray:
    """[n_head_kv, n] window attention mass of layer il over every token (window rows included)."""
    keys = llm.cached_keys(il)                       # [n, n_head_kv * hd]
    q = llm.window_queries(il)                       # [w, n_head * hd]
    n, w = len(keys), len(q)
    hd = keys.shape[1] // n_head_kv
    n_head = q.shape[1] // hd
    k = keys.reshape(n, n_head_kv, hd)
    q = q.reshape(w, n_head, hd)
    mass = np.zeros((n_head_kv, n))
    causal = np.arange(n)[None, :] > (n - w + np.arange(w))[:, None]   # [w, n]
    for h in range(n_head):
        g = h // (n_head // n_head_kv)
        s = q[:, h] @ k[:, g].T / math.sqrt(hd)      # [w, n]
        s[causal] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        mass[g] += (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
    return mass


def kept_by(score: np.ndarray, n: int, w: int, n_keep: int, n_sink: int) -> set:
    """The engine's selection: average-pooled prefix scores (score[: n - w]; a longer score's window part is
    not read), top (n_keep - w - sinks), sinks and window in."""
    pooled = np.convolve(score[: n - w], np.ones(cfg.pool_kernel) / cfg.pool_kernel, mode="same")
    order = np.argsort(-pooled[n_sink:], kind="stable") + n_sink
    return set(range(n_sink)) | set(order[: max(0, n_keep - w - n_sink)].tolist()) | set(range(n - w, n))


def rank(x):
    """Each token's rank percentile within a score vector (1 = highest)."""
    r = np.empty(len(x))
    r[np.argsort(x)] = np.arange(len(x)) / max(1, len(x) - 1)
    return r


records, t0 = [], time.time()
for seed in args.seeds:
    for task in args.tasks:
        for n_target in args.lengths:
            for sample in make_samples(task, n_target, (0.0, 0.25, 0.5, 0.75, 1.0), 1, seed, ev.count_tokens):
                tokens = llm.tokenize(sample.prompt.encode())
                # per needle the answer holds: its value's tokens and its key's (the word the question names)
                key = sample.meta.get("key", "pass key")
                values = [ev.token_span(tokens, v) for v in sample.answers]
                keys = [ev.token_span(tokens, f"{key} is: {v}" if task != "passkey" else f"pass key is {v}")[:-len(values[i])]
                        for i, v in enumerate(sample.answers)]
                llm.reset()
                llm.eval(tokens)
                n = len(tokens)
                heads_kv = {s["il"]: s["n_head_kv"] for s in llm._layer_stats(0)}
                layers = list(heads_kv)
                mass = np.stack([layer_mass(il, heads_kv[il]).sum(axis=0) for il in layers])  # [n_layer, n]
                w = len(llm.window_queries(layers[0]))
                n_keep = n - (n - math.ceil(args.keep * n)) // 256 * 256
                L = args.layer
                prefix = slice(0, n - w)
                rankings = {
                    f"layer {L}": mass[L],
                    f"sum 0..{L}": mass[: L + 1].sum(axis=0),
                    f"sum {L // 2}..{L}": mass[L // 2: L + 1].sum(axis=0),
                    f"max rank 0..{L}": np.max(np.stack([rank(m[prefix]) for m in mass[: L + 1]]), axis=0),
                    f"layer {L} x layer {L - 1}": mass[L] + mass[L - 1],
                    f"later layers {L + 1}..{len(layers) - 1} (oracle)": mass[L + 1:].sum(axis=0),
                }
                rec = {"seed": seed, "task": task, "length": n_target, "depth": sample.depth, "n": n,
                       "n_keep": n_keep, "values": values, "keys": keys, "kept": {}}
                for name, score in rankings.items():
                    kept = kept_by(score, n, w, n_keep, cfg.n_sink)
                    # every needle's value whole, and the share of its key's tokens kept
                    rec["kept"][name] = {"values": all(i in kept for v in values for i in v),
                                         "keys": float(np.mean([i in kept for k in keys for i in k]))}
                records.append(rec)
                print(f"{seed} {task} {n_target} {sample.depth}: " +
                      " ".join(f"{int(v['values'])}/{v['keys']:.2f}" for v in rec["kept"].values()), f"{time.time() - t0:.0f} s", flush=True)
                json.dump({"args": vars(args), "records": records}, open(args.out, "w"), indent=1)

names = list(records[0]["kept"])
for name in names:
    print(f"{name:40s} " + " ".join(
        f"{t} values {np.mean([r['kept'][name]['values'] for r in records if r['task'] == t]):.2f} "
        f"keys {np.mean([r['kept'][name]['keys'] for r in records if r['task'] == t]):.2f}" for t in args.tasks))
