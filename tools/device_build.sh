#!/usr/bin/env bash
# On the GPU machine (no network): install the carried wheels and build pyuncomp with CUDA through
# its own pip/scikit-build path into /tmp/site. Sourced by the device_*_check.sh scripts.
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
SITE=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .src/wheels/*.whl
tar xzf .src/llama_cpp_py.tgz -C "$SITE"
tar xzf .src/llama-src.tgz -C third_party       # the patched tree, stamped: no fetch needed
export PYTHONPATH=$SITE
start=$(date +%s)
# a warm machine keeps the last build: PYUNCOMP_REUSE_BUILD=1 skips it (Python-only changes in tools/);
# otherwise --upgrade replaces the installed package (pip --target keeps an existing one without it)
[ "${PYUNCOMP_REUSE_BUILD:-0}" = 1 ] && [ -e "$SITE/pyuncomp/lib/libggml-cuda.so" ] && { echo "reusing the build in $SITE"; return 0; }
# The image's CXX (a wrapper of /opt/gcc) finds only the static libstdc++: every library then carries its
# own exported copy, and a C++ module loaded later binds into it (matplotlib after pyuncomp, or pyuncomp
# after numpy: SIGSEGV; PLOT_PROBE=1 in benchmarks/run_h100.sh). Build with the system compiler, which
# links libstdc++.so as a user's machine does.
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
CMAKE_BUILD_PARALLEL_LEVEL=16 CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90a" \
    python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target "$SITE" . 2>&1 | tail -5
echo "CUDA configure+build+install: $(( $(date +%s) - start )) s"
# a library with its own static C++ runtime crashes the process once another C++ module loads (see above)
readelf -d "$SITE/pyuncomp/lib/libllama.so" | grep -q 'libstdc++' \
    || echo "WARNING: libllama.so does not link libstdc++.so.6 (a static C++ runtime): imports of other C++ modules may crash"
