"""Stock llama.cpp vs pyuncomp on one GPU, side by side in one run (run by benchmarks/run_h100.sh).

    python benchmarks/cuda_bench.py MODEL.gguf [--depths 8192 32768 65536] [--ratios 0.05 0.1]
        [--methods uncomp,snapkv] [--cache f16] [--n-gen 128] [--concurrent-depth 32768] [--json OUT]
        [--prefill-keeps 0.5 0.3] [--prefill-layer L]

For each depth: the stock cache (method=full: our libllama with the engine inert, i.e. the pinned
llama.cpp) and pyuncomp at each ratio evaluate the same prompt (flash attention, n_batch 2048,
n_ubatch 512, every layer on the GPU). Measured: prefill time, the compression step's time, KV bytes
held, and decode speed as llama-bench's tg measures it (one token per llama_decode, no sampling,
after 4 untimed tokens; the compression step after one untimed compression of the longest prompt,
--no-warm-up to skip it). --prefill-keeps adds, for each method and ratio, rows with a pruned
prefill (UNComp's first stage) keeping each fraction of the tokens after --prefill-layer. Then the largest number of concurrent sequences of --concurrent-depth tokens
that fit on the GPU: sessions sharing one copy of the weights (``share_model_with``) are opened until
the next one fails to allocate; stock sessions hold a full cache each, pyuncomp sessions a compressed,
shrunk one, fitted to its layout (the prompt is evaluated and compressed once, then loaded into each
new session). Every session evaluates in batches of --session-batches (n_batch = n_ubatch), which
sizes its compute buffer; one count per value.
"""

import argparse
import json
import time

import pyuncomp  # first: it loads pyuncomp's libllama  # noqa: I001

from pyuncomp._native import llama_cpp

CACHE_TYPES = {"f16": {}, "q8_0": {"type_k": 8, "type_v": 8}}


def prompt_tokens(n):
    return [1] + [(7 * i) % 31000 + 100 for i in range(n - 1)]


def open_llama(model, n_ctx, method, ratio, cache, n_batch=2048, **extra):
    return pyuncomp.Llama(model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=512, n_gpu_layers=-1, flash_attn=True,
                          method=method, ratio=ratio, auto_compress=False, verbose=False,
                          **CACHE_TYPES[cache], **extra)


def decode_tokens(llm, n):
    """n single-token llama_decode calls (token 1000, no sampling), as llama-bench's tg; waits for the device."""
    ctx = llm._ctx.ctx
    token = (llama_cpp.llama_token * 1)(1000)
    batch = llama_cpp.llama_batch_get_one(token, 1)
    for _ in range(n):
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
    llama_cpp.llama_synchronize(ctx)


def decode_rate(llm, n_gen):
    """tokens/s of n_gen single-token llama_decode calls, as llama-bench's tg (no sampling)."""
    decode_tokens(llm, 4)
    t0 = time.perf_counter()
    decode_tokens(llm, n_gen)
    return n_gen / (time.perf_counter() - t0)


def warm_up(model, depth, cache):
    """One untimed uncomp compression of a depth-token prompt, so that the timed rows measure the steady
    state of a process that has compressed before (as llama-bench warms up): CUDA loads a kernel's module at
    its first launch, and the engine's pinned staging memory is allocated once per process and size. Its
    compression time is printed as the cold one."""
    llm = open_llama(model, depth + 512, "uncomp", 0.05, cache, shrink_cache=False)
    llm.eval(prompt_tokens(depth))
    t0 = time.perf_counter()
    llm.compress()
    cold = time.perf_counter() - t0
    llm.close()
    print(f"warm-up: uncomp 0.05 {cache} at depth {depth}, compress {cold:5.3f} s (cold, untimed)", flush=True)
    return cold


def speed_rows(model, depth, methods, ratios, cache, n_gen, prefill_keeps=(), prefill_layer=None):
    tokens = prompt_tokens(depth)
    rows = []
    settings = [("full", 1.0, None)] + [(m, r, k) for m in methods for r in ratios for k in [None, *prefill_keeps]]
    for m, r, keep in settings:
        prune = {} if keep is None else dict(prefill_prune=True, prefill_keep=keep, prefill_layer=prefill_layer)
        name = m if keep is None else f"{m}+prune{keep}"
        llm = open_llama(model, depth + n_gen + 512, m, r, cache, shrink_cache=False, **prune)
        t0 = time.perf_counter()
        llm.eval(tokens)
        t_prefill = time.perf_counter() - t0
        t_entropy = 0.0
        if m == "uncomp":  # the entropy step alone (compress() does it again), to see where the time goes
            t0 = time.perf_counter()
            llm.entropy_profile()
            t_entropy = time.perf_counter() - t0
        t0 = time.perf_counter()
        llm.compress()
        t_compress = time.perf_counter() - t0 if m != "full" else 0.0
        s = llm.compression_stats()
        rate = decode_rate(llm, n_gen)
        kept = llm.prefill_kept
        llm.close()
        row = dict(depth=depth, method=name, ratio=r, cache=cache, prefill_s=t_prefill, compress_s=t_compress,
                   entropy_s=t_entropy, prefill_kept=kept,
                   decode_tok_s=rate, kv_bytes=s["kv_bytes"], kv_bytes_full=s["kv_bytes_full"])
        rows.append(row)
        print(f"depth {depth:6d} {name:8s} {r:4.2f} {cache}: prefill {t_prefill:6.2f} s "
              f"({rows[0]['prefill_s'] / t_prefill:.2f}x stock{'' if kept is None else f'; later layers on {kept} tokens'})"
              f" + compress {t_compress:5.3f} s "
              f"({100 * t_compress / t_prefill:4.1f}%; entropy alone {t_entropy:5.3f} s), decode {rate:6.1f} tok/s "
              f"({rate / rows[0]['decode_tok_s']:.2f}x), KV held {s['kv_bytes'] / 2**20:7.1f} MiB = "
              f"{s['kv_bytes'] / s['kv_bytes_full']:.3f} of full", flush=True)
    return rows


def count_sessions(owner, open_session, limit=1000):
    """Opens sessions sharing owner's weights until one fails to allocate; returns how many fit."""
    sessions = []
    try:
        while len(sessions) < limit:
            sessions.append(open_session(owner))
    except (ValueError, RuntimeError, MemoryError) as e:
        print(f"  session {len(sessions) + 1} did not fit: {type(e).__name__}: {str(e)[:120]}", flush=True)
    n = len(sessions)
    for s in sessions:
        s.close()
    return n


def concurrent_rows(model, depth, methods, ratio, cache, limit, n_batch):
    owner = open_llama(model, 512, "full", 1.0, cache)  # holds the weights, with a small context
    n_ctx = depth + 512

    # every session, stock or compressed, evaluates in batches of n_batch (its compute buffer's size)
    def stock_session(o):
        return open_llama(model, n_ctx, "full", 1.0, cache, share_model_with=o, n_batch=n_batch)

    n_stock = count_sessions(owner, stock_session, limit)
    print(f"concurrent {depth}-token sequences, n_batch {n_batch}, stock: {n_stock}", flush=True)
    rows = []
    for method in methods:
        # one prompt evaluated and compressed, its compressed state loaded into every session
        first = open_llama(model, n_ctx, method, ratio, cache, share_model_with=owner, n_batch=n_batch)
        first.eval(prompt_tokens(depth))
        first.compress()
        first.eval([1000])  # the first evaluation after compression shrinks the allocation
        state = first.save_state()
        s = first.compression_stats()
        per_session = s["kv_bytes_allocated"]
        print(f"  one compressed {method} session: KV held {s['kv_bytes'] / 2**20:.0f} MiB, allocated "
              f"{per_session / 2**20:.0f} MiB (fitted: {s['fitted']})", flush=True)

        def compressed_session(o):
            t = open_llama(model, n_ctx, method, ratio, cache, share_model_with=o, n_batch=n_batch)
            t.load_state(state)
            t.eval([1001])  # decodes one token in it: a live sequence, its allocation shrunk
            return t

        n_ours = 1 + count_sessions(owner, compressed_session, limit - 1)
        first.close()
        print(f"concurrent {depth}-token sequences, n_batch {n_batch}, pyuncomp {method} {ratio}: {n_ours} "
              f"({n_ours / max(n_stock, 1):.1f}x)", flush=True)
        rows.append(dict(depth=depth, n_batch=n_batch, stock=n_stock, method=method, ratio=ratio, pyuncomp=n_ours,
                         kv_held_per_session=s["kv_bytes"], kv_allocated_per_session=per_session))
    owner.close()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--depths", type=int, nargs="*", default=[8192, 32768, 65536], help="none: only the concurrency count")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--methods", default="uncomp", help="comma-separated")
    ap.add_argument("--cache", choices=sorted(CACHE_TYPES), default="f16")
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--concurrent-depth", type=int, default=32768, help="0: skip the concurrency count")
    ap.add_argument("--max-sessions", type=int, default=1000, help="stop counting there (a CPU run would fill RAM)")
    ap.add_argument("--session-batches", type=int, nargs="+", default=[512],
                    help="the concurrency count's n_batch (= n_ubatch) of every session, one count per value")
    ap.add_argument("--json")
    ap.add_argument("--prefill-keeps", type=float, nargs="*", default=[], help="pruned-prefill rows, one per fraction kept")
    ap.add_argument("--prefill-layer", type=int, default=None, help="the pruned prefill's last full layer (default n_layer // 4)")
    ap.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                    help="time the process's first compression too (see warm_up)")
    a = ap.parse_args()
    out = {"speed": [], "concurrent": None}

    def save():  # after every step: a run cut short keeps what it measured
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)

    if a.depths and a.warm_up:
        out["warm_up"] = dict(depth=max(a.depths), compress_s=warm_up(a.model, max(a.depths), a.cache))
    for depth in a.depths:
        out["speed"] += speed_rows(a.model, depth, a.methods.split(","), a.ratios, a.cache, a.n_gen,
                                   a.prefill_keeps, a.prefill_layer)
        save()
    if a.concurrent_depth:
        out["concurrent"] = []
        for n_batch in a.session_batches:
            out["concurrent"] += concurrent_rows(a.model, a.concurrent_depth, a.methods.split(","), min(a.ratios),
                                                 a.cache, a.max_sessions, n_batch)
            save()


if __name__ == "__main__":
    main()
