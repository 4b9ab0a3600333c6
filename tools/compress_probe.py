"""Compress one passkey prompt and write what the engine kept, so that two runs can be compared: the
host path (UNCOMP_DEVICE_PATH=0) against the graph steps (the default; on a GPU with --n-gpu-layers -1).

    python tools/compress_probe.py OUT.npz [--model M] [--method uncomp] [--cache f16|q8_0] [--n-gpu-layers N]
    python tools/compress_probe.py --compare A.npz B.npz     # exit 1 when they differ

A run saves the greedy continuation, the tokens each head keeps, the entropy profile and each head's
held key rows; --compare checks continuation, counts and rows equal and entropies within 1e-4."""

import argparse
import json
import sys

import pyuncomp  # first: it loads pyuncomp's libllama (numpy first crashed on the GPU image)  # noqa: I001

import numpy as np

# the probed prompt and the cache settings, shared with tools/chunk_probe.py
PROMPT = ("The quick brown fox jumps over the lazy dog. " * 60 + "The secret number is 48213. "
          + "Grass is green and the sky is blue. " * 60 + "What is the secret number? The secret number is")
CACHES = {"f16": {}, "q8_0": {"type_k": 8, "type_v": 8, "flash_attn": True}}


def probe(args):
    cache = CACHES[args.cache]
    llm = pyuncomp.Llama(pyuncomp.resolve_model(args.model), n_ctx=8192, method=args.method, ratio=0.1,
                         n_gpu_layers=args.n_gpu_layers, shrink_cache=False, seed=0, verbose=False, **cache)
    text = llm.create_completion(PROMPT, max_tokens=12, temperature=0.0)["choices"][0]["text"]
    stats = llm.compression_stats()
    kept = np.asarray(stats["tokens_kept"])
    rows = {}
    for i, layer in enumerate(stats["layers"]):
        keys = llm.cached_keys(layer)
        head_dim = keys.shape[1] // kept.shape[1]
        for h, n in enumerate(kept[i]):
            rows[f"{layer}_{h}"] = keys[len(keys) - n:, h * head_dim:(h + 1) * head_dim]
    entropy = np.asarray(stats["entropy"] if stats["entropy"] is not None else [], dtype=np.float64)
    np.savez(args.out, text=np.array(json.dumps(text)), kept=kept, entropy=entropy, **rows)
    llm.close()
    print(f"{args.out}: {text!r}")


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    problems = []
    if str(a["text"]) != str(b["text"]):
        problems.append(f"continuations differ: {a['text']} vs {b['text']}")
    if not np.array_equal(a["kept"], b["kept"]):
        problems.append("tokens kept per head differ")
    if a["entropy"].shape != b["entropy"].shape:
        problems.append("entropy profiles differ in shape")
    elif a["entropy"].size and not np.allclose(a["entropy"], b["entropy"], atol=1e-4):
        problems.append(f"entropy differs by up to {np.abs(a['entropy'] - b['entropy']).max():.2e}")
    heads = [k for k in a.files if k not in ("text", "kept", "entropy")]
    same_rows = [np.mean(np.all(a[k] == b[k], axis=1)) if k in b.files and a[k].shape == b[k].shape else 0.0
                 for k in heads]
    if min(same_rows, default=1.0) < 1.0:
        problems.append(f"held key rows differ: {sum(f < 1.0 for f in same_rows)} of {len(heads)} heads, "
                        f"{100 * (1 - np.mean(same_rows)):.2f}% of rows")
    print(f"compared {len(heads)} heads: " + ("; ".join(problems) if problems else "equal"))
    return not problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="uncomp")
    ap.add_argument("--cache", choices=["f16", "q8_0"], default="f16")
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    args = ap.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare) else 1)
    if not args.out:
        ap.error("give OUT.npz or --compare A B")
    probe(args)


if __name__ == "__main__":
    main()
