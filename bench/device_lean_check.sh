#!/usr/bin/env bash
# One short device call (~150 s) for the lean backward experiment (attention/cuda/NOTES.md v8):
# bench variants 21-22 (lean lockstep and deferred) against 11 and 15, and forward 14 (lean
# ping-pong) against 8 (the API's) and 13 (3 wg BN128), interleaved over 5 rounds at 8k and 16k, errors against cuDNN printed per variant. Carry: carry/flash/bin,
# carry/flash/libflash_bench.so, carry/flash/lib (bash bench/attention/build.sh carry/flash).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export LD_LIBRARY_PATH=$PWD/carry/flash/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
timeout 240 python3 bench/attention/bench_dense.py --lib carry/flash/libflash_bench.so --seqs 8192,16384 --variants \
  --fwd-variants 8,13,14 --bwd-variants 11,15,21,22 --rounds 5 --out $OUT/bench.jsonl > $OUT/bench.log 2>&1; echo "rc $?"
grep -E " variant |^ *T *\||^ *[0-9]+ \|" $OUT/bench.log
