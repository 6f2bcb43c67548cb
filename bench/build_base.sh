#!/usr/bin/env bash
# Builds the baseline of bench/device_ab_check.sh from a commit (default HEAD, so: before the
# working tree's changes) in a scratch worktree: its test_sparse_attn, bench_step and
# libflash_bench.so, packed as carry/base/base.tar.xz (~8 MB).
#   bash bench/build_base.sh [commit]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-HEAD}; wt=/tmp/base_worktree; out=/tmp/base_build
git worktree remove --force $wt 2>/dev/null || rm -rf $wt
git worktree add --detach -f $wt "$rev" >/dev/null
rm -rf $out; mkdir -p $out carry/base
( cd $wt
  make --no-print-directory build/libcore.a >/dev/null
  bash bench/attention/build.sh $out/flash >/dev/null
  objs=$(find model attention -name '*.cu' | sed 's|^\(.*\)\.cu$|build/cuda/\1.o|')
  make --no-print-directory build/tests/gpu/test_sparse_attn build/cuda/bench/e2e/bench_step.o $objs >/dev/null
  ${NVCC:-/usr/local/cuda/bin/nvcc} -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a build/cuda/bench/e2e/bench_step.o \
    $objs build/libcore.a -o $out/bench_step -Xcompiler -fopenmp -lcjson -lpcre2-8 -lz -lm -lgomp -lcudart -lcublas \
    -lcublasLt -lnccl $(mpicc --showme:link 2>/dev/null)
  cp build/tests/gpu/test_sparse_attn $out/ )
cp $out/flash/libflash_bench.so $out/
tar cJf carry/base/base.tar.xz -C $out test_sparse_attn bench_step libflash_bench.so
git worktree remove --force $wt
du -h carry/base/base.tar.xz
