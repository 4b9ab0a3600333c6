#!/usr/bin/env bash
# Pack what benchmarks/run_h100.sh and tools/device_cuda_check.sh need on the GPU machine (no network there) into .src/:
# the fetched+patched llama.cpp tree without docs/models/tests (the sdist itself is over the
# 64 MiB carry limit), the synthetic-GGUF writer, llama-cpp-python's Python layer, and cp312 wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 third_party/fetch_llama_cpp.py >/dev/null
rm -rf .src && mkdir -p .src/wheels
tar czf .src/llama-src.tgz -C third_party \
    --exclude=llama.cpp/models --exclude=llama.cpp/docs --exclude=llama.cpp/tools --exclude=llama.cpp/tests \
    --exclude=llama.cpp/benches --exclude=llama.cpp/examples --exclude=llama.cpp/media \
    --exclude='llama.cpp/ggml/src/ggml-vulkan' --exclude='llama.cpp/ggml/src/ggml-sycl' \
    --exclude='llama.cpp/ggml/src/ggml-opencl' --exclude='llama.cpp/ggml/src/ggml-hexagon' \
    --exclude='llama.cpp/ggml/src/ggml-metal' llama.cpp
cp ../shared/tools/synth_gguf.py .src/
site=$(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("llama_cpp").submodule_search_locations[0])')
tar czf .src/llama_cpp_py.tgz -C "$(dirname "$site")" --exclude=__pycache__ --exclude=lib llama_cpp
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .src/wheels cffi==2.1.1 pycparser==3.12 diskcache==5.6.3
du -sh .src
# SmolLM2's GGUF (98 MB) travels in three parts (~31 MiB: one beside .src and the tracked tree, ~14 MiB, stays under the
# 64 MiB carry limit, which two halves no longer did in session 37), one per call, with its checksum
model=$(cd /tmp && "$OLDPWD/.venv/bin/python" -c 'import pyuncomp; print(pyuncomp.resolve_model(None))')  # the installed package
rm -rf .carry && mkdir -p .carry
split -n 3 -d -a 1 "$model" .carry/smollm2.part
sha256sum < "$model" | cut -d' ' -f1 > .carry/smollm2.sha256
ls -la .carry
