"""Issue #6, session 30: how many of the target needle's digit tokens each KV head of each layer holds after
uncomp 0.05, unpruned against a pruned prefill dropping 256 tokens (floor 1536). A held row is mapped to a
prompt position by its nearest key (cosine) in an unpruned full evaluation of the same layer and head: exact
in layers <= 8, approximate deeper (pruning changes those layers' keys). Prints "held:digits" per head,
unpruned / pruned. Run: python digit_heads.py 4 (sample indices; output: digit_heads.log)"""
import sys, numpy as np
import pyuncomp
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import make_samples
M = pyuncomp.resolve_model(None)
ev = Evaluator(M, n_ctx=2560)
samples = make_samples("niah_multikey", 2048, [0.5, 0.75, 1.0], 2, 0, ev.count_tokens)
idx = [int(a) for a in sys.argv[1:]] or [4]
prompts = [(samples[i], ev.prompt_tokens(samples[i])) for i in idx]
ev.close()
kw = dict(n_ctx=2560, auto_compress=False, verbose=False, shrink_cache=False)
def find(toks, sub):
    for i in range(len(toks) - len(sub) + 1):
        if toks[i:i + len(sub)] == sub: return i
for s, toks in prompts:
    n = len(toks)
    plain = pyuncomp.Llama(M, method="full", **kw); plain.eval(toks)
    full = [plain.cached_keys(l) for l in range(30)]
    ans = s.answers[0]
    dig = None
    for cand in (ans, " " + ans):
        sub = plain.tokenize(cand.encode(), add_bos=False, special=False)
        p = find(toks, sub)
        if p is not None: dig = list(range(p, p + len(sub))); break
    plain.close()
    print(s.answers, "digits at", dig, "of", n)
    res = {}
    for name, extra in (("unpruned", {}), ("drop256", dict(prefill_prune=True, prefill_keep=0.5, prefill_min_tokens=1536))):
        m = pyuncomp.Llama(M, method="uncomp", ratio=0.05, **kw, **extra); m.eval(toks); m.compress()
        st = m.compression_stats(); kept = st["tokens_kept"]
        rows = []
        for l in range(30):
            k = m.cached_keys(l); nh = len(kept[l]); hd = k.shape[1] // nh
            per = []
            for h in range(nh):
                r = k[len(k) - kept[l][h]:, h*hd:(h+1)*hd]; f = full[l][:, h*hd:(h+1)*hd]
                rn = r / (np.linalg.norm(r, axis=1, keepdims=True) + 1e-9); fn = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-9)
                pos = set(np.argmax(rn @ fn.T, axis=1).tolist())
                per.append((kept[l][h], sum(d in pos for d in dig)))
            rows.append(per)
        res[name] = rows
        m.close()
    for l in range(30):
        print(f"layer {l:2d}: " + "  ".join(f"{a}/{b}" for a, b in (
            (" ".join(f"{c}:{d}" for c, d in res["unpruned"][l]), " ".join(f"{c}:{d}" for c, d in res["drop256"][l])),)))
