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
variants = [("unpruned full", None, None), ("drop256 full", 0.5, 1536), ("unpruned u05", None, 0.05), ("drop256 u05", 0.5, 0.05)]
for s in samples:
    toks = ev.prompt_tokens(s)
    outs = []
    for name, keep, ratio in variants:
        llm = ev.llm
        llm.reset()
        if keep is None:
            llm.set_compression(method="snapkv", ratio=0.5, prefill_prune=False)
        else:
            llm.set_compression(method="snapkv", ratio=0.5, prefill_prune=True, prefill_keep=keep, prefill_min_tokens=1536)
        llm.eval(toks)
        first = ev._argmax()
        if ratio is not None:
            llm.set_compression(method="uncomp", ratio=ratio)
            llm.compress()
        out = ev._greedy(first, 10)
        outs.append(f"{name}: {llm.detokenize(out).decode(errors='replace')!r}")
    print(s.answers, " | ".join(outs), flush=True)
