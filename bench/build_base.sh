#!/usr/bin/env bash
# Builds the baseline of bench/device_ab_check.sh from a commit (default HEAD, so: before the
# working tree's changes) in a scratch worktree: its test_sparse_attn, bench_step and
# libflash_bench.so, packed as carry/base/base.tar.xz (~8 MB).
#   bash bench/build_base.sh [commit]
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
rev=${1:-HEAD}; wt=/tmp/base_worktree; out=/tmp/base_build
git worktree remove --force $wt 2>/dev/null || rm -rf $wt
git worktree add --detach -f $wt "$rev" >/dev/null
rm -rf $out; mkdir -p $out carry/base
( cd $wt
  make --no-print-directory build/libcore.a >/dev/null
  bash bench/attention/build.sh $out/flash >/dev/null
  make --no-print-directory build/tests/gpu/test_sparse_attn >/dev/null
  bash "$here/bench/e2e/link_bench.sh" bench_step $out/bench_step
  cp build/tests/gpu/test_sparse_attn $out/ )
cp $out/flash/libflash_bench.so $out/
tar cJf carry/base/base.tar.xz -C $out test_sparse_attn bench_step libflash_bench.so
git worktree remove --force $wt
du -h carry/base/base.tar.xz
