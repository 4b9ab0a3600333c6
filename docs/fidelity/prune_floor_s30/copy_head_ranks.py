"""Issue #6, sessions 30-31: the rank of each needle digit in a layer's window-attention score (recomputed in
numpy from the observed window queries and cached keys, before compression), unpruned against a pruned
prefill dropping 256 tokens, with the scores pooled over 7 tokens as the engine pools ("avg") or as the
UNComp reference does ("max"). Sample 4 of seed 0's multi-key 2k prompts (answer 1333377).
Run: python copy_head_ranks.py avg 18 20 22; python copy_head_ranks.py max 18 20 22 (output: copy_head_ranks.log)"""
import sys, numpy as np
import pyuncomp
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import make_samples
M = pyuncomp.resolve_model(None)
ev = Evaluator(M, n_ctx=2560)
s = make_samples("niah_multikey", 2048, [0.5, 0.75, 1.0], 2, 0, ev.count_tokens)[4]
toks = ev.prompt_tokens(s); ev.close()
kw = dict(n_ctx=2560, auto_compress=False, verbose=False, shrink_cache=False)
MODE = sys.argv[1]; LAY = [int(a) for a in sys.argv[2:]] or [18]
plain = pyuncomp.Llama(M, method="full", **kw); plain.eval(toks)
full = {l: plain.cached_keys(l) for l in LAY}; plain.close()
n = len(toks); dig = list(range(2005, 2012))
for name, extra in (("unpruned", {}), ("drop256", dict(prefill_prune=True, prefill_keep=0.5, prefill_min_tokens=1536))):
    m = pyuncomp.Llama(M, method="uncomp", ratio=0.05, **kw, **extra); m.eval(toks)
    pre = {l: m.cached_keys(l) for l in LAY}
    kept_prefill = m.prefill_kept if extra else n
    for l in LAY:
        q = m.window_queries(l)  # [w, n_head*hd]
        k = pre[l]; nh = 3; hd = k.shape[1] // nh; nq = q.shape[1] // hd; g = nq // nh
        for h in range(nh):
            rows = k[n - kept_prefill:, h*hd:(h+1)*hd]
            qs = q[:, h*g*hd:(h+1)*g*hd].reshape(len(q), g, hd)
            logit = np.einsum("wgd,td->wgt", qs, rows) / np.sqrt(hd)
            # causal: window query i (position n-w+i) sees rows up to it
            w = len(q); T = rows.shape[0]
            for i in range(w): logit[i, :, T - w + i + 1:] = -np.inf
            p = np.exp(logit - logit.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
            raw = p.sum((0, 1))[:T - w]
            pad = np.pad(raw, 3)
            win = np.lib.stride_tricks.sliding_window_view(pad, 7)
            sc = win.max(1) if MODE == "max" else win.mean(1)
            # positions of rows: the pruned rows map to positions via full keys of layer l (exact only at L+1)
            f = full[l][:, h*hd:(h+1)*hd]
            rn = rows / (np.linalg.norm(rows, axis=1, keepdims=True)+1e-9); fn = f/(np.linalg.norm(f,axis=1,keepdims=True)+1e-9)
            cos = rn @ fn.T; pos = cos.argmax(1); best = cos.max(1)
            order = np.argsort(-sc); rank = np.empty_like(order); rank[order] = np.arange(len(order))
            dr = [int(rank[np.where(pos[:T-w] == d)[0][0]]) if (pos[:T-w] == d).any() else None for d in dig]
            print(f"{MODE} {name} layer {l} head {h}: rows {T}, min cos {best.min():.3f}, digit ranks {dr}, finite {np.isfinite(rows).all()}")
    m.close()
