"""Which layer split should uncomp use? SmolLM2's grid (passkey, multi-key, multi-value, qa, chat; 2k and
4k; 5 depths) answered under several policies from one evaluation of each prompt: snapkv, uncomp as it
is (budget pyramid by depth, beta 4), milder or flat depth pyramids, and pyramids ordered by key entropy
(the lowest-entropy stages get the top shares: docs/fidelity.md found SmolLM2's needles in layers 21-23,
the layers of lowest key entropy). Policies are swapped in by name, so no setting needs a CLI flag.

    python docs/fidelity/layer_split_s24/sweep.py OUT.json [--seeds 0 1] [--variants ...] [--tasks ...] [--n-gpu-layers N]
        [--new-turns append|reevaluate|recall] [--lookaheads 0 8]

--lookaheads (session 32): each variant also with Llama(lookahead=N) for each N; a nonzero N names the
setting "<variant>+la<N> <ratio>".
"""
import argparse
import json
import time

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
from pyuncomp.eval.runner import Setting
from pyuncomp.eval.tasks import MAX_TOKENS, make_samples
from variants import VARIANTS, evaluator, use

TASKS = ["passkey", "niah_multikey", "niah_multivalue", "qa", "chat"]

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--model", default=None)
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
ap.add_argument("--tasks", nargs="+", default=TASKS, help="e.g. without chat for a GGUF with no chat template")
ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
ap.add_argument("--n-gpu-layers", type=int, default=0)
ap.add_argument("--no-full", action="store_true", help="skip the full cache's answers (recorded elsewhere)")
ap.add_argument("--lookaheads", type=int, nargs="+", default=[0], help="Llama's lookahead, each a setting")
ap.add_argument("--new-turns", default="append", help="how the chat's second turn meets the first (Llama's new_turns)")
args = ap.parse_args()

ev = evaluator(pyuncomp.resolve_model(args.model), args.lengths, n_gpu_layers=args.n_gpu_layers,
               n_threads=2 if args.n_gpu_layers == 0 else None)
ev.llm.new_turns = args.new_turns
records, t0 = [], time.time()
for seed in args.seeds:
    for task in args.tasks:
        for n in args.lengths:
            for sample in make_samples(task, n, (0.0, 0.25, 0.5, 0.75, 1.0), 1, seed, ev.count_tokens):
                # the prompt is evaluated once; every policy compresses the same saved state (the setting's
                # method is "uncomp", swapped for the variant's policy; the record keeps the variant's name)
                chat = sample.followup is not None
                tokens = ev._chat_tokens(sample.prompt) if chat else ev.llm.tokenize(sample.prompt.encode())
                ev.llm.reset()
                ev.llm.eval(tokens)
                first, state = ev._argmax(), ev.llm.save_state()
                todo = [("full", Setting("full", 1.0), 0)] * (not args.no_full) + [
                    (v, Setting("uncomp", r), la) for v in args.variants for la in args.lookaheads for r in args.ratios]
                for name, setting, lookahead in todo:
                    use(None if name == "full" else name)
                    ev.llm.set_compression(lookahead=lookahead)
                    r = ev._answer(sample, tokens, setting, state, first, chat, MAX_TOKENS[task])
                    name = name + (f"+la{lookahead}" if lookahead else "")
                    r.update(seed=seed, variant=name, lookahead=lookahead,
                             setting=name if name == "full" else f"{name} {setting.ratio:g}")
                    records.append(r)
        # after every task: a run stopped by a time limit keeps what it answered
        json.dump({"args": vars(args), "records": records}, open(args.out, "w"), indent=1)
        print(f"seed {seed} {task}: {len(records)} answers so far, {time.time() - t0:.0f} s", flush=True)
    print(f"seed {seed}: {len(records)} answers so far, {time.time() - t0:.0f} s", flush=True)
