#!/usr/bin/env bash
# One device call (~120 s) for issue 5's short-T gap (dense fwd+bwd 0.84x cuDNN at 1k): where a
# dense training step's attention time goes at 1k x 64 and 16k x 4 (ncu, gpu__time_duration of
# every flash kernel of one bench_step step, summed by bench/e2e/ncu_kernel_sum.py: preparation,
# fused backward, dQ convert, forward), then whether the persistent forward without ping-pong
# (bench variant 10) still beats the API's one-CTA-a-tile ping-pong forward (variant 8) now that
# the kernels walk head groups (bench_dense.py --variants, 2 rounds). Carry: carry/run,
# carry/flash/lib, carry/flash/libflash_bench.so. Logs under $OUT, tables last.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export LD_LIBRARY_PATH=$PWD/carry/flash/lib:$PWD/carry/run/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
timeout 90 python3 bench/attention/bench_dense.py --lib carry/flash/libflash_bench.so --seqs 1024,4096 --variants \
  --fwd-variants 8,10 --bwd-variants 22,23 --rounds 2 --out $OUT/variants.jsonl > $OUT/variants.log 2>&1
echo "variants rc $? ($(el) s)"
for c in 1024x64 16384x4; do
  timeout 50 ncu --clock-control none --kernel-name-base demangled --kernel-name regex:flash \
    --metrics gpu__time_duration.sum --csv --page raw carry/run/bench_step --seq ${c%x*} --batch ${c#*x} \
    --steps 1 --warmup 0 --mode dense > $OUT/ncu_$c.csv 2> $OUT/ncu_$c.err
  echo "ncu $c rc $? ($(el) s)"
done
for c in 1024x64 16384x4; do echo "== $c, flash kernels of one step (12 layers), gpu__time_duration summed"; python3 bench/e2e/ncu_kernel_sum.py $OUT/ncu_$c.csv | cut -c1-150; done
echo "== variants"; grep -E '^T=|^D=|^ *[0-9]+ \|' $OUT/variants.log
echo "total $(el) s"
