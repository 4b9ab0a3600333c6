"""Gemma-3-270M's multi-key answers after a pruned prefill come out as garbled copies of the right number
(9140829 -> 4140829, 1333377 -> 1333333; prune_window_s37/gemma_w32_seed0). Is that the pruned prefill alone
(ratio 1: nothing evicted after it) or the compression on top? Multi-key prompts of seed 0 at depths 0 and 1,
2k, 2 threads, as the harness runs them."""
import sys

import pyuncomp
from pyuncomp.eval.runner import Evaluator, Setting
from pyuncomp.eval.tasks import make_samples

MODEL = pyuncomp.resolve_model("gemma3-270m")
depths = [float(d) for d in (sys.argv[1] if len(sys.argv) > 1 else "0,1").split(",")]
ev = Evaluator(MODEL, n_ctx=2560, n_threads=2)
settings = [Setting("uncomp", 1.0, None), Setting("uncomp", 1.0, 0.5), Setting("uncomp", 0.1, None), Setting("uncomp", 0.1, 0.5)]
for sample in make_samples("niah_multikey", 2048, depths, 2, 0, ev.count_tokens):
    print(f"depth {sample.depth} #{sample.index} answer {sample.answers[0]}", flush=True)
    for rec in ev.run(sample, settings):
        print(f"    {rec['setting']:22s} {rec['score']:.0f} {rec['output'][:40]!r}", flush=True)
ev.close()
