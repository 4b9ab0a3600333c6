"""Decode speed, prefill time and KV bytes of a compressing method vs the full cache (``pyuncomp bench``).

    from pyuncomp.bench import run, markdown_table
    print(markdown_table(run("model.gguf", depths=[2048, 7168], method="uncomp", ratio=0.05)))

At each depth both caches live in one process with the same libllama ('full' is the stock llama.cpp
cache, method=full); after both prompts are evaluated they decode in alternating rounds, so both see
the machine in the same state, and the medians are compared.
"""

from __future__ import annotations

import numbers
import statistics
import time
from typing import List, Optional, Sequence

from .config import CompressionConfig
from .llama import Llama

MIN_DEPTH = 64


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


def _check_args(depths, method, ratio, n_gen, rounds) -> None:
    if not depths:
        raise ValueError("depths: give at least one depth")
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < MIN_DEPTH:
            raise ValueError(f"depth: must be an integer number of tokens >= {MIN_DEPTH}, got {d!r}")
    for name, value in (("n_gen", n_gen), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if not CompressionConfig(method=method, ratio=ratio).compresses:  # validates method and ratio too
        raise ValueError(f"method: {method!r} at ratio {ratio} keeps the whole cache; bench compares a "
                         "compressing method (ratio < 1) with the full cache")


def run(model_path: str, depths: Sequence[int] = (2048, 7168), method: str = "uncomp", ratio: float = 0.05,
        n_gen: int = 32, rounds: int = 3, n_threads: Optional[int] = None, n_gpu_layers: int = 0,
        flash_attn: bool = False, prefill_prune: bool = False, prefill_keep: float = 0.5,
        prefill_layer: Optional[int] = None) -> List[dict]:
    """One row per depth and cache (full first): prefill seconds (incl. compression), decode tok/s per
    round, KV bytes held and what a full cache holds. prefill_prune adds a row of the method with a
    pruned prefill (method name suffixed "+prune"). ValueError on bad arguments."""
    _check_args(depths, method, ratio, n_gen, rounds)
    settings = [("full", 1.0, {}), (method, ratio, {})]
    if prefill_prune:
        prune = dict(prefill_prune=True, prefill_keep=prefill_keep, prefill_layer=prefill_layer)
        CompressionConfig(method=method, ratio=ratio, **prune)  # validates them
        settings.append((method, ratio, prune))
    rows = []
    for depth in depths:
        llms, depth_rows = [], []
        try:
            for m, r, extra in settings:
                llm = Llama(model_path, n_ctx=depth + n_gen * rounds + 16, n_batch=512, method=m, ratio=r,
                            n_threads=n_threads, n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, verbose=False,
                            **extra)
                llms.append(llm)
                seconds, stats = prefill(llm, filler_tokens(llm, depth))
                decode_rate(llm, 1)  # untimed: the first evaluation after compression releases the cache
                depth_rows.append(dict(method=m + ("+prune" if extra else ""), ratio=r, depth=depth, prefill_s=seconds, decode_tok_s=[],
                                       kv_bytes=stats["kv_bytes"], kv_bytes_full=stats["kv_bytes_full"]))
            for _ in range(rounds):
                for llm, row in zip(llms, depth_rows):
                    row["decode_tok_s"].append(decode_rate(llm, n_gen))
        finally:
            for llm in llms:
                llm.close()
        rows += depth_rows
    return rows


def markdown_table(rows: List[dict]) -> str:
    """The rows of ``run`` as a markdown table; speed-up and prefill ratio are against the full row of
    the same depth (decode: medians over rounds)."""
    full = {r["depth"]: r for r in rows if r["method"] == "full"}
    n_rounds = len(rows[0]["decode_tok_s"])
    lines = [f"| method | ratio | depth | prefill s | prefill vs full | decode tok/s (median of {n_rounds}) | "
             "decode vs full | KV bytes held | KV held of full |",
             "|---" * 9 + "|"]
    for r in rows:
        base = full[r["depth"]]
        rate = statistics.median(r["decode_tok_s"])
        speedup = f"{rate / statistics.median(base['decode_tok_s']):.2f}x"
        if n_rounds > 1 and r is not base:  # the spread says how far one run's ratio can be trusted
            per_round = [c / f for c, f in zip(r["decode_tok_s"], base["decode_tok_s"])]
            speedup += f" (rounds: {', '.join(f'{x:.2f}' for x in per_round)})"
        lines.append(f"| {r['method']} | {r['ratio']} | {r['depth']} | {r['prefill_s']:.2f} | "
                     f"{r['prefill_s'] / base['prefill_s']:.3f} | {rate:.1f} | {speedup} | {r['kv_bytes']} | "
                     f"{r['kv_bytes'] / r['kv_bytes_full']:.3f} |")
    return "\n".join(lines)
