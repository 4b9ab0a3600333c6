#!/usr/bin/env bash
# On the GPU machine (no network): build pyuncomp with CUDA through its own pip/scikit-build path,
# load it from Python and generate on the GPU, checking the first tokens against the CPU path.
# Prepare with tools/device_pack.sh, then run with .src carried:  bash tools/device_cuda_check.sh
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source tools/device_build.sh
ls "$SITE/pyuncomp/lib"

# a small random-weight llama (meaningless text; it checks loading and generating on the GPU)
PYTHONPATH=third_party/llama.cpp/gguf-py:$PYTHONPATH python3 .src/synth_gguf.py /tmp/synth.gguf \
    --layers 8 --embd 1024 --ff 2816 --heads 16 --kv-heads 4 --vocab 32000 --ctx 8192 >/dev/null
cd /tmp && python3 - <<'PY'
import time
import pyuncomp
prompt = list(range(1, 513))
runs = {}
for name, ngl in (("cpu", 0), ("cuda", -1)):
    llm = pyuncomp.Llama("/tmp/synth.gguf", n_ctx=2048, n_gpu_layers=ngl, seed=0, verbose=False)
    t = time.perf_counter()
    toks = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1):
        toks.append(tok)
        if len(toks) == 32:
            break
    dt = time.perf_counter() - t
    runs[name] = toks
    s = llm.compression_stats()
    print(f"{name}: 512-token prompt + 32 tokens in {dt:.3f} s; first tokens {toks[:8]}; "
          f"kv_bytes {s['kv_bytes']} full {s['kv_bytes_full']} n_tokens {s['n_tokens']}")
    llm.close()
same = sum(a == b for a, b in zip(runs["cpu"], runs["cuda"]))
print(f"greedy tokens equal on CPU and CUDA: {same}/32 (first divergence at "
      f"{next((i for i, (a, b) in enumerate(zip(runs['cpu'], runs['cuda'])) if a != b), None)})")
PY
