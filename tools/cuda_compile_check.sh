#!/usr/bin/env bash
# Compiles the CUDA sources our patches touch (native/patches 0004, 0009) to PTX for sm_90a on this box, which
# has nvcc but no cuBLAS headers (tools/cuda_stub/cublas_v2.h declares what ggml-cuda calls): a patch that
# does not compile is caught here, not in a device call's five-minute build. Nothing is linked or run.
#   bash tools/cuda_compile_check.sh        # prints each file's result; exit status 1 if any failed
set -uo pipefail
cd "$(dirname "$0")/.."
src=$(python3 third_party/fetch_llama_cpp.py)
stub=$PWD/tools/cuda_stub
cd "$src"
# the flash-attention K-V combinations ggml's CMake defines (ggml/cmake/common.cmake; its default: f16-f16 only)
fa_defs=(-DGGML_CUDA_FA_QUANTS=\"f16-f16\")
for k in Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 BF16 F16; do
    for v in Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 BF16 F16; do
        fa_defs+=(-DGGML_CUDA_FA_${k}_${v}=$([ "$k-$v" = F16-F16 ] && echo 1 || echo 0))
    done
done
status=0
for f in ggml/src/ggml-cuda/ggml-cuda.cu ggml/src/ggml-cuda/fattn.cu \
         ggml/src/ggml-cuda/template-instances/fattn-vec-instance-f16-f16.cu; do
    if nvcc -std=c++17 -arch=sm_90a --ptx --extended-lambda -I"$stub" -DGGML_CUDA_USE_GRAPHS -DGGML_USE_CUDA "${fa_defs[@]}" \
            -Iggml/include -Iggml/src -Iggml/src/ggml-cuda "$f" -o /dev/null 2> /tmp/cuda_compile_check.log; then
        echo "ok     $f"
    else
        echo "FAILED $f"; grep -m 10 "error" /tmp/cuda_compile_check.log; status=1
    fi
done
exit $status
