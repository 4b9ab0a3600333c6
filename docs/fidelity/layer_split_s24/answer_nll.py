"""A finer measure than right/wrong for choosing a layer split: how well each compressed cache keeps
the full cache's own answer. Per prompt (passkey, multi-key, multi-value, qa; 2k and 4k; 5 depths;
several seeds), the full cache answers greedily; then, for each policy and ratio, the saved state is
restored and compressed and that answer is fed back token by token, recording the log-probability
the compressed cache gives each of its tokens and whether its own greedy choice would have been the
same. (The answer's first token comes from the prompt's last logits, computed before any compression,
so it is the same for all and left out.) With --prefill-keeps, the prompt is also evaluated with a
pruned prefill keeping each fraction (issue #6) and every variant and ratio compresses that too; its
first answer token's log-probability comes from the pruned prompt's logits ("first_log_p"; an unpruned
setting's is the full cache's; session 25's seed-2 file has none for unpruned settings). Writes one record per (prompt, setting).

    python docs/fidelity/layer_split_s24/answer_nll.py OUT.json [--seeds 2 3 4] [--variants ...] [--prefill-keeps 0.5]
"""
import argparse
import json
import time

import numpy as np

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
from pyuncomp.eval.runner import Setting
from pyuncomp.eval.tasks import MAX_TOKENS, make_samples, score
from variants import VARIANTS, evaluator, use

TASKS = ["passkey", "niah_multikey", "niah_multivalue", "qa"]

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--model", default=None)
ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
ap.add_argument("--prefill-keeps", type=float, nargs="*", default=[])
ap.add_argument("--no-full", action="store_true", help="no record of the full cache")
args = ap.parse_args()

ev = evaluator(pyuncomp.resolve_model(args.model), args.lengths, n_threads=2)
llm = ev.llm


def log_probs() -> np.ndarray:
    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).astype(np.float64)
    return logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())


def follow(answer):
    """log p of each answer token after the first, and whether it is this cache's own argmax"""
    lp, agree = [], []
    for prev, tok in zip(answer[:-1], answer[1:]):
        llm.eval([prev])
        p = log_probs()
        lp.append(float(p[tok]))
        agree.append(bool(int(np.argmax(p)) == tok))
    return lp, agree


records, t0 = [], time.time()
for seed in args.seeds:
    for task in TASKS:
        for n in args.lengths:
            for sample in make_samples(task, n, (0.0, 0.25, 0.5, 0.75, 1.0), 1, seed, ev.count_tokens):
                tokens = llm.tokenize(sample.prompt.encode())
                llm.reset()
                llm.eval(tokens)
                first, state = ev._argmax(), llm.save_state()
                first_lp = float(log_probs()[first])  # the prompt's own: the same for every unpruned setting
                answer = ev._greedy(first, MAX_TOKENS[task])
                full_score = score(sample.answers, llm.detokenize(answer).decode(errors="replace"))
                for keep in [None] + args.prefill_keeps:
                    if keep is not None:  # the same prompt, pruned: its own logits and cache
                        llm.reset()
                        llm.set_compression(prefill_prune=True, prefill_keep=keep)
                        llm.eval(tokens)
                        first_lp = float(log_probs()[first])
                        llm.set_compression(prefill_prune=False)
                        state = llm.save_state()
                    todo = [("full", 1.0)] * (keep is None and not args.no_full) + \
                        [(v, r) for v in args.variants for r in args.ratios]
                    for name, ratio in todo:
                        llm.load_state(state)
                        if name != "full":
                            use(name)
                            llm.set_compression(**Setting("uncomp", ratio).config())
                            llm.compress()
                        lp, agree = follow(answer)
                        setting = name if name == "full" else f"{name} {ratio:g}" + ("" if keep is None else f" prune{keep:g}")
                        records.append({"seed": seed, "task": task, "length": n, "depth": sample.depth,
                                        "setting": setting, "full_score": full_score, "n": len(lp), "log_p": lp,
                                        "agree": agree, "first_log_p": first_lp})
    print(f"seed {seed}: {len(records)} records, {time.time() - t0:.0f} s", flush=True)
    json.dump({"args": vars(args), "records": records}, open(args.out, "w"), indent=1)
