"""Does the pruned prefill's ranking lose the numbers' later digits? Each prompt is evaluated with a pruned
prefill (keep 0.5) whose ranking pools layer 7's window attention with each kernel, then compressed by
uncomp at 0.05 and 0.1 with the default kernel 7 and answered (two samples per depth).

    cd docs/fidelity/pooling_s28 && python rank_kernel.py niah_multikey 2048 0 7,31,63 OUT.json
        # tasks, length, seed, ranking kernels
"""
import json
import sys
import time

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import MAX_TOKENS, make_samples
from pooled import PooledSetting

tasks, n, seed = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
kernels, out = [int(k) for k in sys.argv[4].split(",")], sys.argv[5]
ev = Evaluator(str(pyuncomp.resolve_model("smollm2-135m")), n_ctx=-(-(int(n * 1.05) + 256) // 256) * 256, n_threads=2)
records, t0 = [], time.time()
for task in tasks:
    for sample in make_samples(task, n, (0.0, 0.25, 0.5, 0.75, 1.0), 2, seed, ev.count_tokens):
        chat = sample.followup is not None
        tokens = ev._chat_tokens(sample.prompt) if chat else ev.llm.tokenize(sample.prompt.encode())
        for k in kernels:
            ev.llm.reset()
            ev.llm.set_compression(prefill_prune=True, prefill_keep=0.5, pool_kernel=k)  # the ranking's kernel
            ev.llm.eval(tokens)
            first, state = ev._argmax(), ev.llm.save_state()
            for ratio in (0.05, 0.1):
                setting = PooledSetting("uncomp", ratio, prefill_keep=0.5, pool_kernel=7)
                r = ev._answer(sample, tokens, setting, state, first, chat, MAX_TOKENS[task])
                r.update(seed=seed, rank_kernel=k, setting=f"uncomp {ratio:g} prune0.5 rank-k{k}")
                records.append(r)
                print(task, sample.depth, sample.index, k, ratio, r["score"], repr(r["output"][:30]), flush=True)
        ev.llm.set_compression(prefill_prune=False, pool_kernel=7)
    json.dump({"records": records}, open(out, "w"), indent=1)
print(f"{time.time() - t0:.0f} s")
