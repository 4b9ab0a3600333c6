"""Where one decoded token's GPU time goes, per kernel (run under Nsight Compute).

    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
        --log-file uncomp.csv python tools/decode_kernels.py MODEL.gguf --depth 8192 --method uncomp
    python tools/decode_kernels.py --summary full.csv snapkv.csv uncomp.csv

It evaluates one prompt of --depth tokens (flash attention, every layer on the GPU), compresses it at
--ratio, decodes --warm tokens untimed (CUDA graphs settle), then profiles exactly --tokens
single-token llama_decode calls between cuProfilerStart and cuProfilerStop. --summary sums
gpu__time_duration per kernel name, one table per log (named by its file).
"""

import argparse
import csv
import ctypes
import re
import sys
from collections import defaultdict


def profile(args):
    import pyuncomp  # first: it loads pyuncomp's libllama  # noqa: I001
    from pyuncomp._native import llama_cpp

    cuda = ctypes.CDLL("libcuda.so.1")
    tokens = [1] + [(7 * i) % 31000 + 100 for i in range(args.depth - 1)]
    llm = pyuncomp.Llama(args.model, n_ctx=args.depth + 512, n_batch=2048, n_ubatch=512, n_gpu_layers=-1,
                         flash_attn=True, method=args.method, ratio=1.0 if args.method == "full" else args.ratio,
                         auto_compress=False, shrink_cache=False, verbose=False)
    llm.eval(tokens)
    llm.compress()
    ctx = llm._ctx.ctx
    token = (llama_cpp.llama_token * 1)(1000)
    batch = llama_cpp.llama_batch_get_one(token, 1)
    for _ in range(args.warm):
        assert llama_cpp.llama_decode(ctx, batch) == 0
    llama_cpp.llama_synchronize(ctx)
    cuda.cuProfilerStart()
    for _ in range(args.tokens):
        assert llama_cpp.llama_decode(ctx, batch) == 0
    llama_cpp.llama_synchronize(ctx)
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
