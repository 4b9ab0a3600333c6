"""Run by tools/device_engine_check.sh on the GPU machine: (1) the same prompt compressed on the CPU
path and on CUDA keeps the same keys; (2) prefill time, decode speed and KV bytes of full vs snapkv on
a Llama-3-8B-shaped random Q4_0 model, f16 KV, flash attention, at each depth given."""

import sys

# first: on the GPU image, importing numpy before pyuncomp's libraries crashed the process at once
# (seen 2026-11-22, not yet understood)
import pyuncomp  # noqa: I001

import numpy as np

from pyuncomp.bench import decode_rate, prefill


def cpu_vs_cuda(small):
    prompt = [1] + [(7 * i) % 31000 + 100 for i in range(2047)]
    keys = {}
    for name, ngl in (("cpu", 0), ("cuda", -1)):
        llm = pyuncomp.Llama(small, n_ctx=4096, n_gpu_layers=ngl, method="snapkv", ratio=0.1, verbose=False)
        llm.eval(prompt)
        keys[name] = [llm.cached_keys(layer) for layer in range(8)]
        llm.close()
    same = np.mean([np.mean(np.all(np.isclose(a, b, atol=2e-2), axis=1)) for a, b in zip(keys["cpu"], keys["cuda"])])
    print(f"kept rows equal on CPU and CUDA (2048-token prompt, snapkv 0.1, 8 layers): {same:.3f}", flush=True)


def speed(model, depth, n_gen=64):
    tokens = [1] + [(7 * i) % 31000 + 100 for i in range(depth - 1)]
    for method, ratio in (("full", 1.0), ("snapkv", 0.05)):
        llm = pyuncomp.Llama(model, n_ctx=depth + n_gen + 16, n_batch=2048, n_ubatch=512, n_gpu_layers=-1,
                             flash_attn=True, method=method, ratio=ratio, verbose=False)
        t_prefill, s = prefill(llm, tokens)
        tok_s = decode_rate(llm, n_gen)
        llm.close()
        print(f"depth {depth} {method} {ratio}: prefill {t_prefill:.2f} s, decode {tok_s:.1f} tok/s, KV held "
              f"{s['kv_bytes'] / 2**20:.0f} MiB = {s['kv_bytes'] / s['kv_bytes_full']:.3f} of full", flush=True)


if __name__ == "__main__":
    cpu_vs_cuda(sys.argv[1])
    for d in sys.argv[3:]:
        speed(sys.argv[2], int(d))
