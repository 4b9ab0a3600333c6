"""Which KV heads keep the chat's lucky number after a recalled turn, under uncomp's budgets and under
snapkv's equal ones (issue #5)? The whole chat (note, reply "OK", question) is evaluated unpruned; each
head's selection at the second turn's compression is recomputed offline from the question's window
queries and the cached keys (selection.py), with the budgets the policy would give.

    python docs/fidelity/chat_turn_s26/heads.py --seed 1 --length 2048 --depth 0.0 [--ratio 0.1]
"""
import argparse

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import make_samples
from pyuncomp.policies import LayerInfo, fit_budgets, make_policy
from selection import prefix_order, window_mass

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--length", type=int, default=2048)
ap.add_argument("--depth", type=float, default=0.0)
ap.add_argument("--ratio", type=float, default=0.1)
args = ap.parse_args()

ev = Evaluator(str(pyuncomp.resolve_model(None)), n_ctx=-(-(int(args.length * 1.05) + 512) // 256) * 256, n_threads=2)
llm = ev.llm
cfg = llm.compression
sample = make_samples("chat", args.length, [args.depth], 1, args.seed, ev.count_tokens)[0]
turn1 = ev._chat_tokens(sample.prompt)
tokens = turn1 + ev._chat_tokens(sample.followup, after=llm.tokenize(b"OK", add_bos=False) + [llm.token_eos()])
digits = ev.token_span(tokens, sample.answers[0])
print("number", sample.answers[0], "tokens", digits, [llm.detokenize([tokens[i]]).decode() for i in digits])
llm.reset()
llm.eval(tokens)
n, w = len(tokens), cfg.window
stats = [s for s in llm._layer_stats(0) if not s["is_swa"]]
entropy = llm._key_entropy(stats, 32, 0, for_compress=True)
budgets = {}
for method in ("uncomp", "snapkv"):
    policy = make_policy(method, cfg.n_head_groups)
    layers = [LayerInfo(s["il"], s["n_head_kv"], e) for s, e in zip(stats, entropy)]
    held = [np.full(s["n_head_kv"], n) for s in stats]
    budgets[method] = fit_budgets(policy.weights(layers), args.ratio * n, w + cfg.n_sink, held)
rows = []
for s, b_u, b_s in zip(stats, budgets["uncomp"], budgets["snapkv"]):
    il, kv = s["il"], s["n_head_kv"]
    q = llm.window_queries(il)
    mass = window_mass(llm.cached_keys(il), q, kv, n, n - len(q))
    for h in range(kv):
        order = prefix_order(mass[h], n, w, cfg.pool_kernel)
        rank = {i: int(np.where(order == i)[0][0]) for i in digits}
        kept = lambda b: sum(rank[i] < b - w for i in digits)  # noqa: E731
        rows.append((il, h, int(b_u[h]), int(b_s[h]), kept(int(b_u[h])), kept(int(b_s[h])), max(rank.values())))
print("layer head | budget uncomp snapkv | number digits kept uncomp snapkv | worst digit's rank")
for r in rows:
    if r[4] != r[5]:
        print(*r)
u = sum(r[4] == len(digits) for r in rows)
s_ = sum(r[5] == len(digits) for r in rows)
print(f"heads keeping every digit: uncomp {u} / {len(rows)}, snapkv {s_} / {len(rows)}")
deep = [r for r in rows if r[0] >= 20]
print(f"  layers 20+: uncomp {sum(r[4] == len(digits) for r in deep)}, snapkv {sum(r[5] == len(digits) for r in deep)} of {len(deep)}")
