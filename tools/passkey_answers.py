"""Passkey answers of one model under several methods, on the CPU or the GPU, as JSON; --compare
checks that two runs (e.g. CPU and CUDA) gave the same answers.

    python tools/passkey_answers.py OUT.json --model M [--n-gpu-layers -1] [--methods full,uncomp,snapkv]
        [--ratio 0.05] [--fillers 90] [--prefill-keep 0.5]
    python tools/passkey_answers.py --compare CPU.json CUDA.json
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pyuncomp  # noqa: E402
from test_engine import passkey_key, passkey_prompt  # noqa: E402  (the tests' prompt and keys)

DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


def answers(a):
    out = {"model": Path(a.model).name, "n_gpu_layers": a.n_gpu_layers, "ratio": a.ratio,
           "prefill_keep": a.prefill_keep, "methods": {}}
    for method in a.methods.split(","):
        # --prefill-keep: the compressing methods with a pruned prefill
        prune = {} if a.prefill_keep is None or method == "full" else dict(prefill_prune=True, prefill_keep=a.prefill_keep,
                                                                                  prefill_min_tokens=0)
        llm = pyuncomp.Llama(a.model, n_ctx=4096, n_gpu_layers=a.n_gpu_layers, flash_attn=True, method=method,
                             ratio=1.0 if method == "full" else a.ratio, seed=0, verbose=False, **prune)
        rows = []
        for depth in DEPTHS:
            key = passkey_key(depth)
            text = llm(passkey_prompt(a.fillers, depth, key), max_tokens=8, temperature=0.0)["choices"][0]["text"]
            stats = llm.compression_stats()
            rows.append({"depth": depth, "key": key, "answer": text, "hit": key in text,
                         "n_tokens": stats["n_tokens"], "tokens_kept": stats["tokens_kept"]})
        llm.close()
        out["methods"][method] = rows
        print(f"{method:8s} n_gpu_layers {a.n_gpu_layers}: {sum(r['hit'] for r in rows)}/{len(rows)} passkeys, "
              f"{rows[0]['n_tokens']} tokens", flush=True)
    return out


def compare(path_a, path_b):
    a, b = (json.load(open(p)) for p in (path_a, path_b))
    same = True
    for method, rows in a["methods"].items():
        other = b["methods"][method]
        equal = sum(x["answer"] == y["answer"] for x, y in zip(rows, other))
        kept = sum(x["tokens_kept"] == y["tokens_kept"] for x, y in zip(rows, other))
        print(f"{method:8s}: passkeys {sum(r['hit'] for r in rows)}/{len(rows)} vs {sum(r['hit'] for r in other)}/"
              f"{len(other)}, same answer {equal}/{len(rows)}, same tokens kept per head {kept}/{len(rows)}")
        same = same and equal == len(rows)
    return same


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--methods", default="full,uncomp,snapkv")
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--fillers", type=int, default=90, help="filler sentences (90: about 2k tokens)")
    ap.add_argument("--prefill-keep", type=float, default=None, help="prune the compressing methods' prefill, keeping this fraction")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    a = ap.parse_args()
    if a.compare:
        sys.exit(0 if compare(*a.compare) else 1)
    a.model = str(pyuncomp.resolve_model(a.model))
    result = answers(a)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
