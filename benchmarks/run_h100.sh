#!/usr/bin/env bash
# Issue #4's GPU benchmark in one run on an H100 machine without network. Here (with network):
#   bash tools/device_pack.sh        # wheels, the patched llama.cpp tree, synth_gguf.py -> .src/
# There, from the repository root, with .src carried:
#   bash benchmarks/run_h100.sh [bench args...]     # e.g. --depths 8192 32768 65536
# It builds pyuncomp with CUDA, writes a Llama-3-8B-shaped random Q4_0 GGUF and a small one, checks
# that the CUDA path keeps what the CPU path keeps on the same prompt, then runs benchmarks/cuda_bench.py.
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source tools/device_build.sh
export PYTHONUNBUFFERED=1
synth() { PYTHONPATH=third_party/llama.cpp/gguf-py:$PYTHONPATH python3 .src/synth_gguf.py "$@" >/dev/null; }
start=$(date +%s)
synth /tmp/small.gguf --layers 8 --embd 1024 --ff 2816 --heads 16 --kv-heads 4 --vocab 32000 --ctx 8192
synth /tmp/llama8b.gguf --ctx 131072
echo "synthetic models written: $(( $(date +%s) - start )) s"

# CPU path vs CUDA path, same prompt, same random model: tokens kept, entropy, held rows
for cache in ${PROBE_CACHES-f16 q8_0}; do
    python3 tools/compress_probe.py /tmp/cpu.npz --model /tmp/small.gguf --cache $cache --n-gpu-layers 0
    python3 tools/compress_probe.py /tmp/cuda.npz --model /tmp/small.gguf --cache $cache --n-gpu-layers -1
    python3 tools/compress_probe.py --compare /tmp/cpu.npz /tmp/cuda.npz || true
done

# where the scheduler puts the attention of a compressed (per-head) 8B layer during decode
(cd /tmp && GGML_SCHED_DEBUG=2 python3 - >/tmp/sched.log 2>&1) <<'PY' || true
import pyuncomp
llm = pyuncomp.Llama("/tmp/llama8b.gguf", n_ctx=8192 + 512, n_batch=2048, n_gpu_layers=-1, flash_attn=True,
                     ratio=0.05, shrink_cache=False, verbose=True)
llm.eval([1] + [(7 * i) % 31000 + 100 for i in range(8191)])
print("tokens kept, layer 0 and 31:", llm.compression_stats()["tokens_kept"][0], llm.compression_stats()["tokens_kept"][31])
llm.eval([500])
llm.eval([501])
PY
grep -E "tokens kept" /tmp/sched.log || true
echo "last decode graph: attention nodes and their backends"
awk '/## SPLIT #0/{buf=""} {buf=buf"\n"$0} END{print buf}' /tmp/sched.log | grep -E "SPLIT|FLASH_ATTN|ADD|REPEAT" | cut -c1-400 | head -24 || true
cp /tmp/sched.log "$OUT/" 2>/dev/null || true

python3 -X faulthandler benchmarks/cuda_bench.py /tmp/llama8b.gguf --json "$OUT/cuda_bench.json" "$@"
