"""Does a wider pooling kernel keep whole numbers? SmolLM2's answers to its grid's number-copying tasks
were often cut short (": 947." for 9479793; "5" for 549): window attention scores the tokens around a
needle's key highly and its later digits less, and the average pooling (kernel 7: 3 tokens either side)
drags along only the first few. Each prompt is evaluated once; snapkv and uncomp answer it at each
ratio with each pooling kernel (and the full cache once).

    python docs/fidelity/pooling_s28/sweep.py OUT.json [--seeds 0 1] [--lengths 2048] [--kernels 7 11 15]
        [--tasks ...] [--new-turns recall] [--n-gpu-layers N]
"""
import argparse
import json
import time

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import MAX_TOKENS, make_samples
from pooled import PooledSetting

TASKS = ["passkey", "niah_multikey", "niah_multivalue", "qa", "chat"]


ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--model", default=None)
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
ap.add_argument("--tasks", nargs="+", default=TASKS)
ap.add_argument("--methods", nargs="+", default=["snapkv", "uncomp"])
ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
ap.add_argument("--kernels", type=int, nargs="+", default=[7, 11, 15])
ap.add_argument("--lengths", type=int, nargs="+", default=[2048])
ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
ap.add_argument("--n-gpu-layers", type=int, default=0)
ap.add_argument("--new-turns", default="recall", help="how the chat's second turn meets the first (Llama's new_turns)")
args = ap.parse_args()

ev = Evaluator(str(pyuncomp.resolve_model(args.model)), n_ctx=-(-(int(max(args.lengths) * 1.05) + 256) // 256) * 256,
               n_gpu_layers=args.n_gpu_layers, n_threads=2 if args.n_gpu_layers == 0 else None)
ev.llm.new_turns = args.new_turns
settings = [PooledSetting("full", 1.0)] + [PooledSetting(m, r, pool_kernel=k) for m in args.methods
                                           for r in args.ratios for k in args.kernels]
records, t0 = [], time.time()
for seed in args.seeds:
    for task in args.tasks:
        for n in args.lengths:
            for sample in make_samples(task, n, tuple(args.depths), 1, seed, ev.count_tokens):
                chat = sample.followup is not None
                tokens = ev._chat_tokens(sample.prompt) if chat else ev.llm.tokenize(sample.prompt.encode())
                ev.llm.reset()
                ev.llm.eval(tokens)
                first, state = ev._argmax(), ev.llm.save_state()
                for setting in settings:
                    r = ev._answer(sample, tokens, setting, state, first, chat, MAX_TOKENS[task])
                    r.update(seed=seed, pool_kernel=setting.pool_kernel)
                    records.append(r)
        print(f"seed {seed} {task}: {len(records)} answers so far, {time.time() - t0:.0f} s", flush=True)
        json.dump({"args": vars(args), "records": records}, open(args.out, "w"), indent=1)
