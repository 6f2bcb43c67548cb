#!/usr/bin/env bash
# Builds and links an end-to-end bench program, bench_step or bench_ops, of the source tree in
# the current directory into OUT: the one link line of bench/build_carry.sh, bench/build_base.sh
# (run in an older commit's worktree, which may predate kernel_trace.cu), bench/e2e/build_gpu.sh
# and bench/build_e2e_carry.sh. bench_step --trace needs libcupti at run time (bench/build_carry.sh
# and bench/build_e2e_carry.sh copy it into carry/run/lib).
#   bash bench/e2e/link_bench.sh bench_step|bench_ops OUT
set -euo pipefail
usage="usage: bash bench/e2e/link_bench.sh bench_step|bench_ops OUT"
[ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
prog=$1 out=$2
case $prog in bench_step|bench_ops) ;; *) echo "link_bench: $prog: want bench_step or bench_ops" >&2; exit 2 ;; esac
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
objs=$(find model attention -name '*.cu' | sed 's|^\(.*\)\.cu$|build/cuda/\1.o|')
trace="" cupti=""
if [ $prog = bench_step ] && [ -f bench/e2e/kernel_trace.cu ]; then
    trace=build/cuda/bench/e2e/kernel_trace.o cupti="-L/usr/local/cuda/lib64 -lcupti"
fi
make --no-print-directory build/libcore.a build/cuda/bench/e2e/$prog.o $trace $objs >/dev/null
$NVCC -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a build/cuda/bench/e2e/$prog.o $trace $objs \
  build/libcore.a -o "$out" -Xcompiler -fopenmp -lcjson -lpcre2-8 -lz -lm -lgomp -lcudart -lcublas -lcublasLt \
  -lnccl $cupti $(mpicc --showme:link 2>/dev/null)
