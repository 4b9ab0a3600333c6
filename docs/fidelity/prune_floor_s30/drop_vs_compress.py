"""Issue #6, session 30: does a pruned prefill that drops only 256 of ~2040 tokens (the default floor of 1536)
hurt by itself, or only under compression? SmolLM2, seed 0's multi-key 2k prompts at depths 0.5 / 0.75 / 1.0:
each answered (10 greedy tokens) with the full cache and after uncomp 0.05, unpruned and pruned.
Run: python docs/fidelity/prune_floor_s30/drop_vs_compress.py  (output: drop_vs_compress.log)"""
import sys
import pyuncomp
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import make_samples
M = pyuncomp.resolve_model(None)
ev = Evaluator(M, n_ctx=2560)
samples = make_samples("niah_multikey", 2048, [0.5, 0.75, 1.0], 2, 0, ev.count_tokens)
# (name, pruned prefill, ratio of the uncomp compression after it; None: the full cache)
variants = [("unpruned full", False, None), ("drop256 full", True, None), ("unpruned u05", False, 0.05), ("drop256 u05", True, 0.05)]
for s in samples:
    toks = ev.prompt_tokens(s)
    outs = []
    for name, pruned, ratio in variants:
        llm = ev.llm
        llm.reset()
        # a pruned prefill needs a compressing method set; nothing is compressed before compress()
        llm.set_compression(method="snapkv", ratio=0.5, prefill_prune=pruned, prefill_keep=0.5, prefill_min_tokens=1536)
        llm.eval(toks)
        first = ev._argmax()
        if ratio is not None:
            llm.set_compression(method="uncomp", ratio=ratio)
            llm.compress()
        out = ev._greedy(first, 10)
        outs.append(f"{name}: {llm.detokenize(out).decode(errors='replace')!r}")
    print(s.answers, " | ".join(outs), flush=True)
