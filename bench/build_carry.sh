#!/usr/bin/env bash
# Builds here (nvcc, sm_90a) everything bench/device_check.sh runs on the GPU machine, into the
# git-ignored carry/run/ (send it with run(carry=["carry/run"])): ./train, the GPU test binaries
# named on the command line (default: those of the CUDA trainer), bench_step, libscfa.so, the
# shared libraries the device image lacks, the demo shards (xz) and the CPU reference run of
# tests/gpu/test_tiny_curve.sh (its log only; made with `make train` here beforehand, see that
# script).
#   bash bench/build_carry.sh [test_model_cuda_step test_zero_cuda ...]
set -euo pipefail
cd "$(dirname "$0")/.."
tests=${*:-test_model_cuda_step}
R=carry/run
rm -rf "$R"; mkdir -p "$R/tests" "$R/lib" "$R/demo"

make --no-print-directory train
for t in $tests; do make --no-print-directory "build/tests/gpu/$t"; cp "build/tests/gpu/$t" "$R/tests/"; done
cp train "$R/train"

bash bench/e2e/link_bench.sh bench_step "$R/bench_step"
make --no-print-directory libscfa && cp build/libscfa.so "$R/"

bash scripts/carry_libs.sh "$R/lib" "$R/train" "$R/bench_step" "$R"/tests/*
cp -L /usr/local/cuda/lib64/libcupti.so.13 "$R/lib/" # bench_step --trace; the device image may lack it
for f in data/shards/demo_*.bin; do
    [ -e "$f" ] || { echo "no demo shards here (scripts/get_corpus.sh --small): the carry gets none"; break; }
    x=carry/demo_xz/$(basename "$f").xz # made once: xz is slow on 2 cores
    [ -s "$x" ] && [ "$x" -nt "$f" ] || { mkdir -p carry/demo_xz; xz -T2 -c "$f" >"$x"; }
    cp "$x" "$R/demo/"
done
if [ -s carry/curve/cpu/log.jsonl ]; then
    mkdir -p "$R/curve_cpu"; cp carry/curve/cpu/log.jsonl carry/curve/cpu/config.json "$R/curve_cpu/"
fi
du -sh "$R"; ls -la "$R" "$R/tests" "$R/lib"
