"""What the lookahead costs: the time of compress() (lookahead, then compression) with and without it,
on a passkey prompt of each length, beside the prompt's evaluation time. The evaluation is done once
per length and saved; each setting restores it and times compress() alone.

    python benchmarks/lookahead_cost.py [--model M] [--lengths 2048 7168] [--lookaheads 0 16] [--ratio 0.1]
        [--method uncomp] [--threads 2] [--n-gpu-layers 0] [--flash-attn] [--n-batch 512] [--repeats 3]
"""
import argparse
import time

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
from pyuncomp.eval.tasks import make_samples

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 7168])
ap.add_argument("--lookaheads", type=int, nargs="+", default=[0, 16])
ap.add_argument("--ratio", type=float, default=0.1)
ap.add_argument("--method", default="uncomp")
ap.add_argument("--threads", type=int, default=None)
ap.add_argument("--n-gpu-layers", type=int, default=0)
ap.add_argument("--flash-attn", action="store_true")
ap.add_argument("--n-batch", type=int, default=512)
ap.add_argument("--repeats", type=int, default=3)
args = ap.parse_args()

path = str(pyuncomp.resolve_model(args.model))
for length in args.lengths:
    llm = pyuncomp.Llama(path, n_ctx=length + 512, method=args.method, ratio=args.ratio, auto_compress=False,
                         n_threads=args.threads, n_gpu_layers=args.n_gpu_layers, flash_attn=args.flash_attn,
                         n_batch=args.n_batch, verbose=False)
    count = lambda text: len(llm.tokenize(text.encode(), add_bos=False))  # noqa: E731
    tokens = llm.tokenize(make_samples("passkey", length, [0.5], 1, 0, count)[0].prompt.encode())
    t0 = time.perf_counter()
    llm.eval(tokens)
    evaluation = time.perf_counter() - t0
    state = llm.save_state()
    for lookahead in args.lookaheads:
        llm.set_compression(lookahead=lookahead)
        times = []
        for _ in range(args.repeats):
            llm.load_state(state)
            t0 = time.perf_counter()
            llm.compress()
            times.append(time.perf_counter() - t0)
        print(f"{len(tokens):6d} tokens, {args.method} {args.ratio:g}, lookahead {lookahead:2d} "
              f"({llm.lookahead_tokens} decoded): compress {min(times):6.3f} s (best of {args.repeats}); "
              f"the prompt's evaluation {evaluation:6.2f} s", flush=True)
    llm.close()
