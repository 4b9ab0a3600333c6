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
python3 -X faulthandler tools/device_engine_bench.py /tmp/small.gguf /tmp/llama8b.gguf 8192 32768
