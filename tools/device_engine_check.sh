#!/usr/bin/env bash
# On the GPU machine: the compression engine on CUDA. (1) the same prompt compressed on the CPU path
# and on CUDA keeps the same keys; (2) decode speed and prefill time of full vs snapkv at 32k on a
# Llama-3-8B-shaped random Q4_0 model, f16 KV, flash attention. Prepare with tools/device_pack.sh.
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source tools/device_build.sh
PYTHONPATH=third_party/llama.cpp/gguf-py:$PYTHONPATH python3 .src/synth_gguf.py /tmp/small.gguf \
    --layers 8 --embd 1024 --ff 2816 --heads 16 --kv-heads 4 --vocab 32000 --ctx 8192 >/dev/null
PYTHONPATH=third_party/llama.cpp/gguf-py:$PYTHONPATH python3 .src/synth_gguf.py /tmp/llama8b.gguf --ctx 40960 >/dev/null
cd /tmp && python3 - <<'PY'
import time
import numpy as np
import pyuncomp

prompt = [1] + [(7 * i) % 31000 + 100 for i in range(2047)]
keys = {}
for name, ngl in (("cpu", 0), ("cuda", -1)):
    llm = pyuncomp.Llama("/tmp/small.gguf", n_ctx=4096, n_gpu_layers=ngl, method="snapkv", ratio=0.1, verbose=False)
    llm.eval(prompt)
    keys[name] = [llm.cached_keys(l) for l in range(8)]
    llm.close()
same = np.mean([np.mean(np.all(np.isclose(a, b, atol=2e-2), axis=1)) for a, b in zip(keys["cpu"], keys["cuda"])])
print(f"kept rows equal on CPU and CUDA (2048-token prompt, snapkv 0.1, 8 layers): {same:.3f}")

depth, n_gen = 32768, 64
tokens = [1] + [(7 * i) % 31000 + 100 for i in range(depth - 1)]
for method, ratio in (("full", 1.0), ("snapkv", 0.05), ("snapkv", 0.1)):
    llm = pyuncomp.Llama("/tmp/llama8b.gguf", n_ctx=depth + n_gen + 16, n_batch=2048, n_ubatch=512,
                         n_gpu_layers=-1, flash_attn=True, method=method, ratio=ratio, verbose=False)
    t = time.perf_counter(); llm.eval(tokens); t_prefill = time.perf_counter() - t
    s = llm.compression_stats()
    t = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([llm.sample(temp=0.0)])
    tok_s = n_gen / (time.perf_counter() - t)
    print(f"{method} {ratio}: prefill {depth} tokens {t_prefill:.2f} s, decode {tok_s:.1f} tok/s, "
          f"kv_bytes {s['kv_bytes'] / 2**20:.0f} MiB = {s['kv_bytes'] / s['kv_bytes_full']:.3f} of full", flush=True)
    llm.close()
PY
