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
# libcore.a's CPU backend reaches MPI (runtime/dist.c), so MPI is linked too.
LIBS="-lcjson -lpcre2-8 -lz -lm -lgomp -lcublas -lcublasLt $(mpicc --showme:link 2>/dev/null)"

objs=()
for f in model/cuda/*.cu attention/cuda/flash_attn.cu attention/cuda/plan_cuda.cu attention/cuda/sparse_attn.cu; do
    objs+=("build/cuda/${f%.cu}.o")
done
# SKIP_MAKE=1 links the objects as they are (e.g. while a file of another part is mid-edit).
[ "${SKIP_MAKE:-0}" = 1 ] || make --no-print-directory build/libcore.a "${objs[@]}"
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
    echo "link carry/bench_step"; bash bench/e2e/link_bench.sh bench_step carry/bench_step
    echo "link carry/bench_ops"; bash bench/e2e/link_bench.sh bench_ops carry/bench_ops
fi
# The shared libraries the device image may lack (MPI and its helpers, cJSON, PCRE2).
bins=()
for bin in carry/test_model_cuda carry/test_model_cuda_step carry/bench_step carry/bench_ops; do
    [ -x "$bin" ] && bins+=("$bin")
done
[ ${#bins[@]} -eq 0 ] || bash scripts/carry_libs.sh carry/lib "${bins[@]}"
ls -la carry carry/lib
