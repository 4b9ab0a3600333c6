"""Chat turns with new_turns="recall" on one model, prompts of growing length, every step printed before
it runs (llama.cpp's log on): where a device run of the recall path fails, if it does. Compares each
second-turn answer with new_turns="reevaluate" (the same selection, the history evaluated again).

    python tools/recall_probe.py --model M [--n-gpu-layers -1] [--lengths 2048 4096] [--seeds 0] [--depths 0 0.5 1]
"""
import argparse

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
from llama_cpp import _logger
from pyuncomp.eval.runner import Evaluator, Setting
from pyuncomp.eval.tasks import make_samples

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
ap.add_argument("--n-gpu-layers", type=int, default=0)
ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
ap.add_argument("--seeds", type=int, nargs="+", default=[0])
ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
args = ap.parse_args()

ev = Evaluator(str(pyuncomp.resolve_model(args.model)), n_ctx=-(-(int(max(args.lengths) * 1.05) + 256) // 256) * 256,
               n_gpu_layers=args.n_gpu_layers)
_logger.set_verbose(True)
same = total = 0
for seed in args.seeds:
    for n in args.lengths:
        for sample in make_samples("chat", n, args.depths, 1, seed, ev.count_tokens):
            answers = {}
            for mode in ("recall", "reevaluate"):
                ev.llm.new_turns = mode
                for setting in (Setting("uncomp", 0.05), Setting("snapkv", 0.1)):
                    print(f"seed {seed} length {n} depth {sample.depth} {mode} {setting.name}", flush=True)
                    r = ev.run(sample, [setting])[0]
                    answers.setdefault(setting.name, []).append(r["output"])
            for name, (recall, reevaluate) in answers.items():
                same, total = same + (recall == reevaluate), total + 1
                print(f"  {name}: recall {recall!r} reevaluate {reevaluate!r}", flush=True)
print(f"recall answered as reevaluate in {same} of {total}")
