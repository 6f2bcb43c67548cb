#!/usr/bin/env bash
# One device call (~8 min), session 16: some of the dense forward's exponentials on the FMA
# pipes (exp2_poly, attention/cuda/flash_common.cuh) instead of the MUFU.
#   1. test_flash_attn of the API built with FLASH_FWD_EXP_POLY=4 (and HEAD's, carry/flash/bin,
#      with HEAD_TESTS=1);
#   2. bench_dense at 8k and 16k: the forward variants FWD_VARIANTS (default 8,10,13,14,15-19:
#      the API's two instances, 3 warpgroups, persistent ping-pong, exp-poly 2/4/6 of 16 n-tiles
#      on ping-pong and 2/4 on persistent), 2 rounds;
#   3. end to end, dense GPT-2 small, 8k x 4 and 16k x 2: bench_step built with
#      FLASH_FWD_EXP_POLY = 0, 2, 4 (E2E_POLYS), two interleaved runs each, then torch.compile
#      (TORCH_S);
#   4. the model test of the exp-poly 4 build; an ncu census of one 8k x 4 step (exp-poly 0),
#      every kernel, if time is left.
# Build here (git-ignored, all xz-packed into carry/s16/): bench_step_p{0,2,4}.xz,
# test_flash_attn_p4.xz, test_model_cuda_p4.xz (bench/build_exp_poly.sh); carry as well
# carry/flash/{bin,lib,libflash_bench.so} (bench/attention/build.sh) and carry/run/lib.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
export LD_LIBRARY_PATH=$PWD/carry/flash/lib:$PWD/carry/run/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
B=/tmp/s16; mkdir -p $B
for f in carry/s16/*.xz; do n=$(basename $f .xz); xz -dc $f > $B/$n && chmod +x $B/$n; done

if [ -n "${HEAD_TESTS:-}" ]; then
  SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=60 bash tests/gpu/run_gpu.sh carry/flash/bin > $OUT/flash.log 2>&1
  echo "flash tests (HEAD): $(tail -1 $OUT/flash.log) ($(el) s)"
fi
timeout 60 $B/test_flash_attn_p4 > $OUT/flash_p4.log 2>&1; echo "flash test (exp-poly 4): rc $? $(tail -1 $OUT/flash_p4.log) ($(el) s)"
grep -iE "fail|mismatch" $OUT/flash*.log | head -5

timeout ${BENCH_S:-150} python3 bench/attention/bench_dense.py --lib carry/flash/libflash_bench.so --seqs 8192,16384 --variants --rounds 2 \
  --fwd-variants ${FWD_VARIANTS:-8,10,13,14,15,16,17,18,19} --bwd-variants 22 --out $OUT/bench.jsonl > $OUT/bench.log 2>&1
echo "bench rc $? ($(el) s)"

for c in 8192x4 16384x2; do for r in 1 2; do for n in ${E2E_POLYS:-0 2 4}; do
  timeout 25 $B/bench_step_p$n --seq ${c%x*} --batch ${c#*x} --steps 5 --warmup 2 --mode dense >> $OUT/e2e_p$n.jsonl 2>> $OUT/e2e.err
done; done; done; echo "bench_step done ($(el) s)"
timeout ${TORCH_S:-150} python3 bench/e2e/torch_gpt.py --modes compile --configs 8192x4,16384x2 --steps 5 --warmup 2 >> $OUT/torch.jsonl 2>> $OUT/e2e.err
echo "torch rc $? ($(el) s)"
timeout 60 $B/test_model_cuda_p4 > $OUT/model_p4.log 2>&1; echo "model test (exp-poly 4): rc $? $(tail -1 $OUT/model_p4.log) ($(el) s)"
left=$(( ${NCU_BY:-400} - $(el) ))
if [ $left -gt 30 ]; then
  timeout $left ncu --clock-control none --kernel-name-base function --metrics gpu__time_duration.sum --csv --page raw \
    $B/bench_step_p0 --seq 8192 --batch 4 --steps 1 --warmup 0 --mode dense > $OUT/ncu_8k.csv 2> $OUT/ncu_8k.err
  echo "ncu rc $? ($(el) s)"
fi

echo "== tables ($(el) s)"
python3 - $OUT <<'PY'
import json, os, sys
o = sys.argv[1]
rows = lambda f: [json.loads(l) for l in open(f) if l.startswith("{")] if os.path.exists(f) else []
for r in rows(o + "/bench.jsonl"):
    print("T %5d cudnn fwd %.3f fb %.3f | ours fwd %.3f (%.2fx) fb %.3f (%.2fx)"
          % (r["T"], r["cudnn_fwd"], r["cudnn_fb"], r["ours_fwd"], r["cudnn_fwd"] / r["ours_fwd"], r["ours_fb"],
             r["cudnn_fb"] / r["ours_fb"]))
    for k in ("fwd_variants", "bwd_variants"):
        for name, m in r.get(k, {}).items():
            print(f"   {k[:3]} {name:<44} {m['ms']:.3f} ms ({' '.join(f'{x:.3f}' for x in m['runs'])}) err {m['err']:.1e}")
t = {(r["seq"], r["batch"]): r for r in rows(o + "/torch.jsonl")}
for n in (0, 2, 4):
    for r in rows(o + f"/e2e_p{n}.jsonl"):
        ref = t.get((r["seq"], r["batch"]))
        print(f"exp-poly {n} {r['seq']} x {r['batch']} {r['ms_per_step']:.1f} ms mem {r.get('device_used_gib')} GiB"
              + (f" | torch {ref['ms_per_step']:.1f} ms: {r['tokens_per_s'] / ref['tokens_per_s']:.3f}x" if ref else ""))
PY
[ -s $OUT/ncu_8k.csv ] && python3 bench/e2e/ncu_kernel_sum.py $OUT/ncu_8k.csv 30 | cut -c1-140
echo "total $(el) s"
