#!/usr/bin/env bash
# One device call (~400-550 s, mostly FlexAttention's compiles) for issue 6's FlexAttention
# comparison at T = 16384 (B*T 65536, H 12, D 64): ours (libscfa, plan included), cuDNN dense
# SDPA and torch.compile'd flex_attention with the same buckets / keep masks, with and without
# its per-call create_block_mask, every hash nb and qk drop rate of the paper's sweep
# (bench/scfa.py; docs/PERF.md session 3 has the last such run). Carry: carry/run (libscfa.so,
# bash bench/build_carry.sh). The JSON is rewritten after every point, so a run cut short keeps
# what it measured. Logs under $OUT; the table last.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export LD_LIBRARY_PATH=$PWD/carry/run/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
timeout ${FLEX_LIMIT:-540} python3 bench/scfa.py --lib carry/run/libscfa.so --with-dense --no-check --seqs 16384 \
  --nbs ${NBS:-2,4,8,16,32,64} --drops ${DROPS:-0.1,0.3,0.5,0.7,0.9} --reps 10 --out $OUT/scfa_flex.json > $OUT/scfa_flex.log 2>&1
echo "rc $?"
sed -n '/^ms, median/,$p' $OUT/scfa_flex.log | head -40
