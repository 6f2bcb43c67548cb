#!/bin/bash
# Builds the CUDA backend's GPU tests and the end-to-end step benchmark into carry/ (git-ignored),
# the folder the device machine receives with `run(carry=["carry"])`. Libraries the device image
# may lack (cJSON, PCRE2) are copied to carry/lib; run there with LD_LIBRARY_PATH=carry/lib.
#   bash bench/e2e/build_gpu.sh            # everything
#   bash bench/e2e/build_gpu.sh bench      # only carry/bench_step
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
FLAGS="-O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I. -lineinfo --expt-relaxed-constexpr"
LIBS="-lcjson -lpcre2-8 -lz -lm -lgomp -lcublas -lcublasLt"

objs=()
for f in model/cuda/*.cu attention/cuda/flash_attn.cu; do objs+=("build/cuda/${f%.cu}.o"); done
make --no-print-directory build/libcore.a "${objs[@]}"
mkdir -p carry/lib

link() { # link <source.cu> <output>
    echo "link $2"
    $NVCC $FLAGS "$1" "${objs[@]}" build/libcore.a -o "$2" $LIBS
}
what=${1:-all}
if [ "$what" = all ] || [ "$what" = tests ]; then
    link tests/gpu/test_model_cuda.cu carry/test_model_cuda
    link tests/gpu/test_model_cuda_step.cu carry/test_model_cuda_step
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
    link bench/e2e/bench_step.cu carry/bench_step
fi
for lib in libcjson.so.1 libpcre2-8.so.0; do
    src=$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')
    [ -n "$src" ] && cp -L "$src" carry/lib/
done
ls -la carry carry/lib
