"""Which layers and KV heads keep a needle: SmolLM2, the two seed-1 prompts (session 21's grid) where
uncomp 0.1 scored under snapkv 0.1. The prompt is evaluated once with the full cache; for each setting
its state is restored and compressed, and each head's held key rows are matched to the positions they
had before (rows are post-RoPE, so unique). Prints, per layer, how many heads hold every token of the
needle's number, the layer's mean budget, and the answer."""
import json
import sys

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np
from pyuncomp.eval.runner import Evaluator, settings_for
from pyuncomp.eval.tasks import make_samples

CASES = [("niah_multikey", 4096, 0.0), ("niah_multivalue", 2048, None)]
ev = Evaluator(str(pyuncomp.resolve_model(None)), n_ctx=4096 + 128, n_threads=2)
llm = ev.llm
report = []
for task, length, depth in CASES:
    sample = make_samples(task, length, [depth] if depth is not None else [0.5], 1, 1, ev.count_tokens)[0]
    tokens = llm.tokenize(sample.prompt.encode())
    spans = [ev.token_span(tokens, value) for value in sample.answers]
    llm.reset()
    llm.eval(tokens)
    first = ev._argmax()
    state = llm.save_state()
    layers = llm.compression_stats()["layers"]
    full_rows = {}
    for il in layers:
        keys = llm.cached_keys(il)
        hd = keys.shape[1] // 3
        for h in range(3):
            full_rows[(il, h)] = {keys[p, h * hd:(h + 1) * hd].tobytes(): p for p in range(len(keys))}
    case = {"task": task, "length": length, "depth": depth, "n_tokens": len(tokens), "needles": spans, "settings": {}}
    for setting in settings_for(["snapkv", "uncomp"], [0.1]):
        llm.load_state(state)
        llm.set_compression(**setting.config())
        llm.compress()
        stats = llm.compression_stats()
        kept = np.asarray(stats["tokens_kept"])
        per_layer = []
        for i, il in enumerate(stats["layers"]):
            keys = llm.cached_keys(il)
            hd = keys.shape[1] // 3
            held = []
            for h, n in enumerate(kept[i]):
                rows = keys[len(keys) - n:, h * hd:(h + 1) * hd]
                held.append({full_rows[(il, h)][r.tobytes()] for r in rows})
            # per needle: heads of this layer holding every token of its number
            per_layer.append({"layer": int(il), "budget": [int(b) for b in kept[i]],
                              "heads_holding": [sum(set(span) <= positions for positions in held) for span in spans]})
        out = llm.detokenize(ev._greedy(first, 40)).decode(errors="replace")
        case["settings"][setting.name] = {"answer": out, "layers": per_layer}
    report.append(case)
    print(task, length, depth, "needle token spans", spans)
    for name, s in case["settings"].items():
        holding = np.array([l["heads_holding"] for l in s["layers"]])  # [layer, needle]
        print(f"  {name}: answer {s['answer'][:60]!r}")
        print(f"    heads (of 3) holding each needle, per layer: " + " ".join("".join(map(str, row)) for row in holding))
        print(f"    budget per layer (mean over heads): " + " ".join(str(int(np.mean(l['budget']))) for l in s["layers"]))
json.dump(report, open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/needle_heads.json", "w"), indent=1)
