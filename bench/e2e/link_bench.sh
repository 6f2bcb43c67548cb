#!/usr/bin/env bash
# Builds and links bench_step (the end-to-end step benchmark) of the source tree in the current
# directory into OUT: the one link line of bench/build_carry.sh, bench/build_base.sh (run in an
# older commit's worktree, which may predate kernel_trace.cu) and bench/e2e/build_gpu.sh.
# --trace needs libcupti at run time (bench/build_carry.sh copies it into carry/run/lib).
#   bash bench/e2e/link_bench_step.sh OUT
set -euo pipefail
out=${1:?usage: bash bench/e2e/link_bench_step.sh OUT}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
objs=$(find model attention -name '*.cu' | sed 's|^\(.*\)\.cu$|build/cuda/\1.o|')
trace="" cupti=""
if [ -f bench/e2e/kernel_trace.cu ]; then trace=build/cuda/bench/e2e/kernel_trace.o cupti="-L/usr/local/cuda/lib64 -lcupti"; fi
make --no-print-directory build/libcore.a build/cuda/bench/e2e/bench_step.o $trace $objs >/dev/null
$NVCC -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a build/cuda/bench/e2e/bench_step.o $trace $objs \
  build/libcore.a -o "$out" -Xcompiler -fopenmp -lcjson -lpcre2-8 -lz -lm -lgomp -lcudart -lcublas -lcublasLt \
  -lnccl $cupti $(mpicc --showme:link 2>/dev/null)
