"""Decode speed, prefill time and KV bytes of pyuncomp vs the full cache, in one run (CPU or GPU).

    python tools/bench_decode.py --depth 7168 --ratio 0.05 --method uncomp --threads 2

Both caches live in one process with the same libllama ('full' is the stock llama.cpp cache,
method=full); after both prompts are evaluated they decode in alternating rounds.
"""

import argparse
import statistics
import time

import pyuncomp


def filler_tokens(llm, n):
    text = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    toks = llm.tokenize(text.encode(), add_bos=False)
    return [llm.token_bos()] + (toks * (n // len(toks) + 1))[: n - 1]


def prefill(llm, prompt):
    """Evaluates prompt (and so compresses it). Returns (seconds, compression_stats() after it)."""
    t0 = time.perf_counter()
    llm.eval(prompt)
    return time.perf_counter() - t0, llm.compression_stats()


def decode_rate(llm, n_gen):
    """Decodes n_gen greedy tokens one at a time; returns tokens/s."""
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([llm.sample(temp=0.0)])
    return n_gen / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--depth", type=int, default=7168)
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--method", default="uncomp")
    ap.add_argument("--n-gen", type=int, default=32, help="tokens per timed decode round")
    ap.add_argument("--rounds", type=int, default=5, help="decode rounds, alternating between the two caches")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--flash-attn", choices=["on", "off"], default="off")
    a = ap.parse_args()
    path = str(pyuncomp.resolve_model(a.model))
    rows = [("full", 1.0), (a.method, a.ratio)]
    llms, prefills, rates = {}, {}, {m: [] for m, _ in rows}
    for m, r in rows:
        llms[m] = pyuncomp.Llama(path, n_ctx=a.depth + a.n_gen * a.rounds + 16, n_batch=512, method=m, ratio=r,
                                 n_threads=a.threads, n_gpu_layers=a.n_gpu_layers, flash_attn=a.flash_attn == "on",
                                 verbose=False)
        prefills[m] = prefill(llms[m], filler_tokens(llms[m], a.depth))
        decode_rate(llms[m], 1)  # untimed: the first evaluation after compression releases the cache
    # the caches take turns, so both see the machine in the same state; the medians are compared
    for _ in range(a.rounds):
        for m, _ in rows:
            rates[m].append(decode_rate(llms[m], a.n_gen))
    for llm in llms.values():
        llm.close()
    print(f"| method | ratio | depth | prefill s | decode tok/s (median of {a.rounds}) | KV bytes held | of full |")
    print("|---|---|---|---|---|---|---|")
    for (m, r) in rows:
        tp, s = prefills[m]
        print(f"| {m} | {r} | {a.depth} | {tp:.2f} | {statistics.median(rates[m]):.1f} | {s['kv_bytes']} | "
              f"{s['kv_bytes'] / s['kv_bytes_full']:.3f} |")
    per_round = [c / f for c, f in zip(rates[a.method], rates["full"])]
    print(f"decode speed-up: {statistics.median(rates[a.method]) / statistics.median(rates['full']):.2f}x "
          f"(per round: {', '.join(f'{x:.2f}' for x in per_round)}); "
          f"prefill time ratio: {prefills[a.method][0] / prefills['full'][0]:.3f}")


if __name__ == "__main__":
    main()
