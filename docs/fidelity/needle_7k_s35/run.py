"""Where SmolLM2 loses the last digit of a 7k needle (session 34: seed 0, multi-key, depth 0, every
compressed setting answers 9479796 for 9479793, the full cache 9479793). The prompt is evaluated once;
for each setting its state is restored and compressed, and each head's held key rows are matched to the
positions they had before (post-RoPE rows are unique). Prints the answer and, per layer, how many of the
3 KV heads hold each digit of the needle's number; then the answers when one band of layers keeps every
token and the rest are compressed (and the reverse), which localizes the layers whose compression
changes the digit.

    python run.py OUT.json [--ratios 0.1 0.2 0.3 0.5] [--band 5]
"""
import argparse
import json

from needle import LayerShares, evaluated_needle  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
ap.add_argument("--band", type=int, default=5)
ap.add_argument("--ratio", type=float, default=0.1, help="the compressed layers' ratio in the band runs")
ap.add_argument("--lookaheads", type=int, nargs="+", default=[16, 0])
args = ap.parse_args()

ev, sample, tokens = evaluated_needle()
llm = ev.llm
value = sample.answers[0]
span = ev.token_span(tokens, value)
print("needle", value, "tokens", span, [llm.detokenize([tokens[i]]).decode() for i in span], flush=True)
first = ev._argmax()
state = llm.save_state()
layers = llm.compression_stats()["layers"]
n_head = 3
full_rows = {}
for il in layers:
    keys = llm.cached_keys(il)
    hd = keys.shape[1] // n_head
    for h in range(n_head):
        full_rows[(il, h)] = {keys[p, h * hd:(h + 1) * hd].tobytes(): p for p in range(len(keys))}


def answer(method, ratio, lookahead, full_layers=None):
    llm.load_state(state)
    if full_layers is None:
        llm.set_compression(method=method, ratio=ratio, lookahead=lookahead)
    else:  # the mean that keeps every token in full_layers and ratio x tokens in the rest
        n = len(tokens)
        mean = (len(full_layers) * n + (len(layers) - len(full_layers)) * ratio * n) / len(layers)
        llm.set_compression(method="snapkv", budget=int(mean), lookahead=lookahead)
        # a share large enough to keep every token in full_layers, snapkv's flat share elsewhere
        llm.policy = LayerShares([1e6 if il in full_layers else 1.0 for il in layers])
    llm.compress()
    stats = llm.compression_stats()
    kept = np.asarray(stats["tokens_kept"])
    holding = []  # [layer][digit]: heads holding that digit's token
    for i, il in enumerate(stats["layers"]):
        keys = llm.cached_keys(il)
        hd = keys.shape[1] // n_head
        held = [{full_rows[(il, h)][r.tobytes()] for r in keys[len(keys) - k:, h * hd:(h + 1) * hd]}
                for h, k in enumerate(kept[i])]
        holding.append([sum(p in positions for positions in held) for p in span])
    out = llm.detokenize(ev._greedy(first, 12)).decode(errors="replace")
    return {"answer": out, "right": value in out, "holding": holding, "budget": kept.mean(axis=1).round().tolist()}


report = {"needle": value, "span": span, "n_tokens": len(tokens), "settings": {}, "bands": {}}
for lookahead in args.lookaheads:
    for method in ("snapkv", "uncomp"):
        for ratio in args.ratios:
            r = answer(method, ratio, lookahead)
            name = f"{method} {ratio:g} la{lookahead}"
            report["settings"][name] = r
            print(f"{name}: {r['answer']!r}", flush=True)
            print("   digits held (heads of 3) per layer: " + " ".join("".join(map(str, d)) for d in r["holding"]), flush=True)
n_layers = len(layers)
for lo in range(0, n_layers, args.band):
    band = [layers[i] for i in range(lo, min(lo + args.band, n_layers))]
    rest = [il for il in layers if il not in band]
    for name, full in ((f"layers {band[0]}-{band[-1]} full", band), (f"layers {band[0]}-{band[-1]} compressed", rest)):
        r = answer("snapkv", args.ratio, 16, full)
        report["bands"][name] = r
        print(f"{name} (the rest {'at' if full is band else 'full'} {args.ratio:g}): {r['answer']!r}", flush=True)
json.dump(report, open(args.out, "w"), indent=1)
