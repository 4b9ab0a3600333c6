"""Decode speed, prefill time and KV bytes of pyuncomp vs the full cache, in one run (CPU or GPU).

    python tools/bench_decode.py --depth 7168 --ratio 0.05 --threads 2

Both runs use the same libllama; 'full' is the stock llama.cpp cache (method=full).
"""

import argparse
import time

import pyuncomp


def filler_tokens(llm, n):
    text = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    toks = llm.tokenize(text.encode(), add_bos=False)
    return [llm.token_bos()] + (toks * (n // len(toks) + 1))[: n - 1]


def time_prefill_and_decode(llm, prompt, n_gen):
    """Evaluates prompt (and so compresses it), then decodes n_gen greedy tokens one at a time.
    Returns (prefill seconds, decode tokens/s, compression_stats() after the prefill); closes llm."""
    t0 = time.perf_counter()
    llm.eval(prompt)
    t_prefill = time.perf_counter() - t0
    stats = llm.compression_stats()
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([llm.sample(temp=0.0)])
    t_decode = time.perf_counter() - t0
    llm.close()
    return t_prefill, n_gen / t_decode, stats


def run(path, method, ratio, depth, n_gen, threads, n_gpu_layers, flash_attn):
    llm = pyuncomp.Llama(path, n_ctx=depth + n_gen + 16, n_batch=512, method=method, ratio=ratio,
                         n_threads=threads, n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, verbose=False)
    return time_prefill_and_decode(llm, filler_tokens(llm, depth), n_gen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--depth", type=int, default=7168)
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--method", default="snapkv")
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--flash-attn", choices=["on", "off"], default="off")
    a = ap.parse_args()
    path = str(pyuncomp.resolve_model(a.model))
    rows = [("full", 1.0), (a.method, a.ratio)]
    results = {m: run(path, m, r, a.depth, a.n_gen, a.threads, a.n_gpu_layers, a.flash_attn == "on") for m, r in rows}
    print(f"| method | ratio | depth | prefill s | decode tok/s | KV bytes held | of full |")
    print(f"|---|---|---|---|---|---|---|")
    for (m, r) in rows:
        tp, tok_s, s = results[m]
        print(f"| {m} | {r} | {a.depth} | {tp:.2f} | {tok_s:.1f} | {s['kv_bytes']} | {s['kv_bytes'] / s['kv_bytes_full']:.3f} |")
    print(f"decode speed-up: {results[a.method][1] / results['full'][1]:.2f}x; "
          f"prefill time ratio: {results[a.method][0] / results['full'][0]:.3f}")


if __name__ == "__main__":
    main()
