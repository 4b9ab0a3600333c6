"""Which scores keep a chat's first-turn fact for a question not yet asked? (issue #5, chat in append mode).
In append mode the first turn is compressed at its end, scored by its last queries ("reply OK"); the
question comes a turn later. Each first turn is evaluated once, unpruned; for each scoring, each KV head's
selection (budget ratio x n, flat; pooled, top prefix tokens + window, as the engine: selection.py) is
recomputed offline and we record the share of (layer, head) pairs that keep every token of the lucky number.

Scorings: the turn's own window queries (today), a probe turn's queries (a generic user question evaluated
after the turn and dropped), the real question's queries (the oracle), and the key norm (low first).

    python docs/fidelity/chat_turn_s26/score.py OUT.json [--seeds 0 1] [--lengths 2048 4096]
"""
import argparse
import json
import time

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import make_samples
from selection import prefix_order, window_mass

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
ap.add_argument("--window", type=int, default=32, help="queries observed (the engine's default is 8)")
ap.add_argument("--probes", nargs="+", default=[
    "What did I tell you? Repeat my notes.",
    "Repeat the previous context exactly.",
    "Which numbers, names and facts did I mention?"])
args = ap.parse_args()

ev = Evaluator(str(pyuncomp.resolve_model(None)), n_ctx=-(-(int(max(args.lengths) * 1.05) + 512) // 256) * 256,
               n_threads=2)
llm = ev.llm
llm.set_compression(window=args.window)
cfg = llm.compression
ok = llm.tokenize(b"OK", add_bos=False) + [llm.token_eos()]
ok = [t for t in ok if t is not None]


def kept_number(score, n, budget, span, w=8):
    """Whether the engine's selection by score (top budget - w of the prefix, the last w in) keeps span."""
    top = set(prefix_order(score, n, w, cfg.pool_kernel)[: max(0, budget - w)].tolist())
    return all(i in top or i >= n - w for i in span)


records, t0 = [], time.time()
for seed in args.seeds:
    for n_target in args.lengths:
        for sample in make_samples("chat", n_target, (0.0, 0.25, 0.5, 0.75, 1.0), 1, seed, ev.count_tokens):
            tokens = ev._chat_tokens(sample.prompt)
            span = ev.token_span(tokens, sample.answers[0])
            n = len(tokens)
            llm.reset()
            llm.eval(tokens)
            state = llm.save_state()
            stats = [s for s in llm._layer_stats(0)]
            keys = {s["il"]: llm.cached_keys(s["il"]) for s in stats}
            query_sets = {"turn end": {s["il"]: llm.window_queries(s["il"])[-8:] for s in stats},
                          "turn end (32)": {s["il"]: llm.window_queries(s["il"]) for s in stats}}
            for name, text in [("question (oracle)", sample.followup)] + [(f"probe: {p}", p) for p in args.probes]:
                llm.load_state(state)
                llm.eval(ev._chat_tokens(text, after=ok))
                query_sets[name] = {s["il"]: llm.window_queries(s["il"]) for s in stats}
            rec = {"seed": seed, "length": n_target, "depth": sample.depth, "n": n, "kept": {}}
            for name in list(query_sets) + ["key norm (low)"]:
                for ratio in args.ratios:
                    budget = round(ratio * n)
                    per_layer = []
                    for s in stats:
                        il, kv = s["il"], s["n_head_kv"]
                        if name == "key norm (low)":
                            hd = keys[il].shape[1] // kv
                            m = -np.linalg.norm(keys[il][:n].reshape(n, kv, hd), axis=2).T
                        else:
                            q = query_sets[name][il]  # the turn's own window sits in its last rows
                            m = window_mass(keys[il], q, kv, n, n - len(q) if name.startswith("turn end") else n)
                        per_layer.append([kept_number(m[h], n, budget, span) for h in range(kv)])
                    rec["kept"][f"{name} @ {ratio}"] = per_layer
            records.append(rec)
            print(f"{seed} {n_target} {sample.depth}: " + " ".join(
                f"{np.mean(v):.2f}" for v in rec["kept"].values()), f"{time.time() - t0:.0f} s", flush=True)
            json.dump({"args": vars(args), "records": records}, open(args.out, "w"))

for name in records[0]["kept"]:
    share = np.mean([np.mean(r["kept"][name]) for r in records])
    deep = np.mean([np.mean(r["kept"][name][20:]) for r in records])
    print(f"{name:70s} all heads {share:.2f}  layers 20+ {deep:.2f}")
