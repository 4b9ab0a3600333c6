"""End-to-end chat in append mode with the first turn's compression scored by other queries (issue #5):
the turn's own (today), the real question's (oracle: what reevaluate gets, without re-evaluating), or a
probe user turn's (evaluated after the first turn and dropped). The second turn is appended and
compressed as the evaluator does.

    python docs/fidelity/chat_turn_s26/proto.py OUT.json [--seeds 0] [--lengths 2048]
"""
import argparse
import json
import time

import pyuncomp  # noqa: I001
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import MAX_TOKENS, make_samples, score

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--seeds", type=int, nargs="+", default=[0])
ap.add_argument("--lengths", type=int, nargs="+", default=[2048])
ap.add_argument("--settings", nargs="+", default=["snapkv:0.1", "uncomp:0.1", "uncomp:0.05"])
ap.add_argument("--probe", default="What did I tell you? Repeat my notes.")
args = ap.parse_args()

ev = Evaluator(str(pyuncomp.resolve_model(None)), n_ctx=-(-(int(max(args.lengths) * 1.05) + 512) // 256) * 256,
               n_threads=2)
llm = ev.llm
ok = llm.tokenize(b"OK", add_bos=False)
records, t0 = [], time.time()
for seed in args.seeds:
    for n_target in args.lengths:
        for sample in make_samples("chat", n_target, (0.0, 0.25, 0.5, 0.75, 1.0), 1, seed, ev.count_tokens):
            tokens = ev._chat_tokens(sample.prompt)
            llm.set_compression(method="snapkv", ratio=0.5)
            llm.reset()
            llm.eval(tokens)
            first = ev._argmax()
            state = llm.save_state()
            queries = {"turn end": None}
            for name, text in (("question", sample.followup), ("probe", args.probe)):
                llm.load_state(state)
                llm.eval(ev._chat_tokens(text, after=ok))
                queries[name] = {s["il"]: llm.window_queries(s["il"]) for s in llm._layer_stats(0)}
            rec = {"seed": seed, "length": n_target, "depth": sample.depth, "scores": {}, "outputs": {}}
            for setting in args.settings:
                method, ratio = setting.split(":")
                for name, q in queries.items():
                    llm.load_state(state)
                    llm.set_compression(method=method, ratio=float(ratio))
                    if q is not None:
                        llm._set_window_queries(q)
                    llm.compress()
                    out = ev._greedy(first, MAX_TOKENS["chat"])
                    llm.auto_compress = True
                    try:
                        llm.eval(ev._chat_tokens(sample.followup, after=out))
                        out = ev._greedy(ev._argmax(), MAX_TOKENS["chat"])
                    finally:
                        llm.auto_compress = False
                    text = llm.detokenize(out).decode(errors="replace")
                    rec["scores"][f"{setting} {name}"] = score(sample.answers, text)
                    rec["outputs"][f"{setting} {name}"] = text
            records.append(rec)
            print(seed, n_target, sample.depth, " ".join(f"{k}={v:.0f}" for k, v in rec["scores"].items()),
                  f"{time.time() - t0:.0f} s", flush=True)
            json.dump({"args": vars(args), "records": records}, open(args.out, "w"), indent=1)
for k in records[0]["scores"]:
    print(f"{k:30s} {100 * sum(r['scores'][k] for r in records) / len(records):.0f}")
