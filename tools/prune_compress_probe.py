"""Two questions about a pruned prefill on the 8B-shaped random model at 32k (session 38's H100 run of
benchmarks/cuda_bench.py): why every window score of the pruning layer was not finite there (the CPU, on the
same shape cut to 10 layers and 512 tokens, gives finite ones), and why the compression after a pruned
prefill took 0.85 s against 0.24 s after a plain one, with its own timed steps (UNCOMP_TIMING) summing to
~0.2 s. For each setting: the prefill's time, whether the pruning layer's window queries and keys are
finite, and compress() under cProfile (the Python-side calls that take the time).

    python tools/prune_compress_probe.py --model llama8b.gguf --depth 32768 [--settings prune32,prune8,plain,prune32-noflash]
"""
import argparse
import cProfile
import dataclasses
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from cuda_bench import prompt_tokens  # noqa: E402  (the bench's own prompt; it imports pyuncomp first)
import pyuncomp  # noqa: E402

SETTINGS = {  # name: (prefill_prune, prefill_window, flash_attn)
    "plain": (False, 32, True),
    "prune32": (True, 32, True),
    "prune8": (True, 8, True),
    "prune32-noflash": (True, 32, False),
}


def finite_summary(name, a):
    a = np.asarray(a)
    bad = int((~np.isfinite(a)).sum())
    finite = a[np.isfinite(a)]
    top = float(np.abs(finite).max()) if finite.size else float("nan")
    return f"{name}: {a.shape}, {bad} not finite, max |finite| {top:.3g}"


def probe(model, depth, name):
    prune, window, flash = SETTINGS[name]
    llm = pyuncomp.Llama(model, n_ctx=depth + 512, n_batch=2048, n_ubatch=512, n_gpu_layers=-1, flash_attn=flash,
                         method="uncomp", ratio=0.05, auto_compress=False, shrink_cache=False, verbose=False,
                         prefill_prune=prune, prefill_keep=0.5, prefill_window=window)
    layer = llm._prefill_layer_of(dataclasses.replace(llm.compression, prefill_prune=True))  # also for "plain"
    tokens = prompt_tokens(depth)
    t0 = time.perf_counter()
    llm.eval(tokens)
    t_prefill = time.perf_counter() - t0
    print(f"== {name}: prefill {t_prefill:.3f} s, later layers on {llm.prefill_kept}", flush=True)
    print("  " + finite_summary(f"layer {layer} window queries", llm.window_queries(layer)), flush=True)
    print("  " + finite_summary(f"layer {layer} keys", llm.cached_keys(layer)), flush=True)
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    llm.compress()
    profile.disable()
    print(f"  compress {time.perf_counter() - t0:.3f} s (lookahead {llm.lookahead_tokens} tokens)", flush=True)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(14)
    print("\n".join("    " + line for line in out.getvalue().splitlines() if "/" in line or "ncalls" in line), flush=True)
    llm.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--depth", type=int, default=32768)
    ap.add_argument("--settings", default="plain,prune32,prune8,prune32-noflash")
    a = ap.parse_args()
    for name in a.settings.split(","):
        if name not in SETTINGS:
            raise SystemExit(f"--settings: unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        probe(a.model, a.depth, name)


if __name__ == "__main__":
    main()
