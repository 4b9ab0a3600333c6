"""Where one decoded token's GPU time goes, per kernel (run under Nsight Compute).

    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
        --log-file uncomp.csv python benchmarks/decode_kernels.py MODEL.gguf --depth 8192 --method uncomp
    python benchmarks/decode_kernels.py --summary full.csv snapkv.csv uncomp.csv

It evaluates one prompt of --depth tokens with cuda_bench.py's prompt and settings (flash attention,
f16 cache, every layer on the GPU), compresses it at --ratio, decodes --warm tokens untimed (CUDA graphs
settle), then profiles exactly --tokens single-token llama_decode calls (cuda_bench.py's decode) between
cuProfilerStart and cuProfilerStop. --summary sums
gpu__time_duration per kernel name, one table per log (named by its file).
"""

import argparse
import csv
import ctypes
import re
import sys
from collections import defaultdict


def profile(args):
    from cuda_bench import decode_tokens, open_llama, prompt_tokens  # beside this file; loads pyuncomp's libllama first

    llm = open_llama(args.model, args.depth + 512, args.method, 1.0 if args.method == "full" else args.ratio, "f16",
                     shrink_cache=False)
    llm.eval(prompt_tokens(args.depth))
    llm.compress()
    decode_tokens(llm, args.warm)
    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuProfilerStart()
    decode_tokens(llm, args.tokens)
    cuda.cuProfilerStop()
    llm.close()


def summary(paths, tokens):
    """per log: kernels by µs per token, largest first, from ncu's csv logs."""
    for path in paths:
        kernels = defaultdict(lambda: [0, 0.0])
        with open(path) as f:
            rows = list(csv.reader(line for line in f if line.startswith('"')))
        header = rows[0] if rows else []
        for cells in rows[1:]:
            rec = dict(zip(header, cells))
            if rec.get("Metric Name") != "gpu__time_duration.sum":
                continue
            scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}[rec["Metric Unit"]]
            entry = kernels[re.sub(r"[<(].*", "", rec["Kernel Name"])]
            entry[0] += 1
            entry[1] += float(rec["Metric Value"].replace(",", "")) * scale
        total = sum(us for _, us in kernels.values()) / tokens
        print(f"\n{path}: {total:.1f} µs of kernels per token")
        for name, (calls, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
            print(f"  {us / tokens:8.1f} µs  {calls / tokens:6.1f} calls  {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--method", default="uncomp")
    ap.add_argument("--warm", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=2)
    ap.add_argument("--summary", nargs="+", help="ncu's csv logs to summarise")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary, a.tokens)
    elif a.model:
        profile(a)
    else:
        ap.error("give a model to profile or --summary LOG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
