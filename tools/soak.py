"""Soak: many generate calls with compression on one Llama; prints resident memory (RSS) as it goes,
and the GPU's memory in use (nvidia-smi) when layers are offloaded. With glibc it also prints the heap's
bytes in use and the free bytes malloc holds (mallinfo2), and RSS after malloc_trim at the end: growth in
use is held memory (a leak, or caches), growth of free bytes only is the allocator's fragmentation.

    python tools/soak.py [--model M] [--calls 1000] [--method uncomp] [--ratio 0.05] [--n-gpu-layers -1] [--prefill-prune]

Each call evaluates a different prompt (~640 tokens with the default 90 items) (so it is evaluated, compressed and its cache shrunk
anew) and generates 8 tokens. RSS is read from /proc/self/statm every ten calls."""

import argparse
import ctypes
import ctypes.util
import os
import resource
import subprocess
import time

import pyuncomp


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):  # not glibc, or before 2.33
        return None
    libc.mallinfo2.restype = _MallInfo2
    return libc


LIBC = _glibc()


def heap_note():
    """The heap's bytes in use and the free bytes malloc holds, or '' without glibc's mallinfo2."""
    if LIBC is None:
        return ""
    m = LIBC.mallinfo2()
    return f", heap in use {(m.uordblks + m.hblkhd) / 2**20:7.2f} MiB, free held {m.fordblks / 2**20:6.2f} MiB"


def gpu_mib():
    """Memory in use on the first GPU (MiB) as nvidia-smi reports it."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--method", default="uncomp")
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--items", type=int, default=90, help="filler sentences per prompt (~7 tokens each)")
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--prefill-prune", action="store_true",
                    help="every prompt through the pruned prefill (keep 0.5, whatever its length)")
    a = ap.parse_args()
    prune = {"prefill_prune": True, "prefill_min_tokens": 0} if a.prefill_prune else {}
    llm = pyuncomp.Llama(str(pyuncomp.resolve_model(a.model)), n_ctx=2048, method=a.method, ratio=a.ratio,
                         n_gpu_layers=a.n_gpu_layers, seed=0, verbose=False, **prune)
    on_gpu = a.n_gpu_layers != 0
    filler = " ".join(f"Item {i} is a red car." for i in range(a.items))
    t0 = time.time()
    marks = []
    for call in range(1, a.calls + 1):
        prompt = f"Document {call}. " + filler + f" The pass key is {call * 7919 % 100000}. The pass key is"
        llm.create_completion(prompt, max_tokens=8, temperature=0.0)
        if call % 10 == 0:
            marks.append((call, rss_mib(), gpu_mib() if on_gpu else None))
            gpu = f", GPU {marks[-1][2]:8.0f} MiB" if on_gpu else ""
            print(f"call {call:5d}: RSS {marks[-1][1]:8.1f} MiB{gpu}{heap_note()}, {time.time() - t0:6.0f} s", flush=True)
    s = llm.compression_stats()
    if LIBC is not None:  # with the model still loaded: what RSS the free bytes malloc held made up
        LIBC.malloc_trim(0)
        print(f"after malloc_trim: RSS {rss_mib():.1f} MiB{heap_note()}")
    llm.close()
    growth = marks[-1][1] - marks[0][1]
    if on_gpu:
        print(f"GPU memory after call {marks[0][0]}: {marks[0][2]:.0f} MiB, after call {marks[-1][0]}: "
              f"{marks[-1][2]:.0f} MiB (growth {marks[-1][2] - marks[0][2]:+.0f} MiB)")
    print(f"RSS after call {marks[0][0]}: {marks[0][1]:.1f} MiB, after call {marks[-1][0]}: {marks[-1][1]:.1f} MiB "
          f"(growth {growth:+.1f} MiB); peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB; "
          f"last KV held {s['kv_bytes'] / 2**20:.2f} MiB of {s['kv_bytes_full'] / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
