#!/usr/bin/env bash
# One device call (~2 min): end to end A/B of two builds of the trainer's step, dense GPT-2
# small at 8k x 4 and 16k x 2, two interleaved runs each, against compiled PyTorch in the same
# call, then the new build's GPU tests. Build here with `bash bench/build_e2e_carry.sh [OLD_REV]`
# (carry/e2e: bench_step_old, bench_step_new, bench_step_serial, bench_ops, and the tests
# test_model_cuda, test_model_cuda_step, test_flash_attn xz-packed, each run when present) and
# send carry = ["carry/e2e", "carry/run/lib"].
# Logs under $OUT; the table last. TORCH_S: seconds for torch.compile (default 90; 0 skips it).
# BUILDS: the bench_step_<name> of carry/e2e to run (default "old new"; a name may be a wrapper
# script that sets an environment variable). NCU_KERNELS=regex: an ncu census of those kernels
# in one step (NCU_CONFIG, default 8192x4) of each build of NCU_BUILDS (default "old new";
# session 16: NCU_KERNELS=layernorm_); NCU_DETAIL=regex: bench/device_kernel_detail.sh on one
# such kernel of the new build at 8k x 4. TRACE=16384x2 (a config): the in-stream kernel
# timeline of one step of each build of TRACE_BUILDS (default "new"), summarised by
# bench/e2e/trace_summary.py (bench_step --trace; needs libcupti in carry/run/lib).
# carry/e2e/bench_ops, when present, runs at 16k x 2 (the ops one by one).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export LD_LIBRARY_PATH=$PWD/carry/run/lib:${LD_LIBRARY_PATH:-}
T0=$(date +%s)
# the SM clock and power every 200 ms while the steps run: throttling shows as a gap between
# the step time and the sum of its kernels' times (ncu runs each kernel on its own)
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits -lms 200 > $OUT/clocks.csv &
SMI=$!
export BUILDS=${BUILDS:-old new}
for c in 8192x4 16384x2; do for b in $BUILDS $BUILDS; do
  timeout 25 carry/e2e/bench_step_$b --seq ${c%x*} --batch ${c#*x} --steps 5 --warmup 2 --mode dense >> $OUT/e2e_$b.jsonl 2>> $OUT/e2e.err
done; done; kill $SMI; echo "bench_step done $(( $(date +%s) - T0 )) s"
python3 - $OUT/clocks.csv <<'PY'
import sys
v = [[float(x) for x in l.split(",")] for l in open(sys.argv[1]) if l.count(",") == 2]
busy = sorted(r for r in v if r[1] > 200) # samples under load
if busy:
    q = lambda i, f: sorted(r[i] for r in busy)[int(f * (len(busy) - 1))]
    print(f"under load ({len(busy)} samples): SM clock min {q(0, 0):.0f} median {q(0, .5):.0f} max {q(0, 1):.0f} MHz,"
          f" power median {q(1, .5):.0f} W, max temperature {q(2, 1):.0f} C")
PY
[ "${TORCH_S:-90}" = 0 ] || timeout ${TORCH_S:-90} python3 bench/e2e/torch_gpt.py --modes compile --configs 8192x4,16384x2 --steps 5 --warmup 2 >> $OUT/torch.jsonl 2>> $OUT/e2e.err
echo "torch done $(( $(date +%s) - T0 )) s"
for t in test_model_cuda test_model_cuda_step test_flash_attn; do
  [ -f carry/e2e/$t.xz ] || continue
  xz -dc carry/e2e/$t.xz > /tmp/$t && chmod +x /tmp/$t
  timeout 150 /tmp/$t > $OUT/$t.log 2>&1; echo "$t rc $? $(tail -1 $OUT/$t.log) $(( $(date +%s) - T0 )) s"
  grep -m5 FAIL $OUT/$t.log
done
if [ -n "${TRACE:-}" ]; then
  for b in ${TRACE_BUILDS:-new}; do
    timeout 60 carry/e2e/bench_step_$b --seq ${TRACE%x*} --batch ${TRACE#*x} --steps 1 --warmup 2 --mode dense \
      --trace $OUT/trace_$b.csv >> $OUT/e2e_trace.jsonl 2>> $OUT/e2e.err
    echo "== trace $b $TRACE"; python3 bench/e2e/trace_summary.py $OUT/trace_$b.csv 20 | cut -c1-130
  done
fi
if [ -x carry/e2e/bench_ops ]; then
  timeout 60 carry/e2e/bench_ops --seq 16384 --batch 2 > $OUT/bench_ops.txt 2>> $OUT/e2e.err; echo "bench_ops rc $?"
  grep -iE "crossentropy|adamw|sum" $OUT/bench_ops.txt
fi
if [ -n "${NCU_KERNELS:-}" ]; then # the kernels matching this regex in one step of each build
  NC=${NCU_CONFIG:-8192x4}
  for b in ${NCU_BUILDS:-old new}; do
    timeout 90 ncu --clock-control none --kernel-name-base function --kernel-name "regex:$NCU_KERNELS" --metrics gpu__time_duration.sum \
      --csv --page raw carry/e2e/bench_step_$b --seq ${NC%x*} --batch ${NC#*x} --steps 1 --warmup 0 --mode dense > $OUT/ncu_$b.csv 2>> $OUT/e2e.err
    echo "== $b $NC"; python3 bench/e2e/ncu_kernel_sum.py $OUT/ncu_$b.csv ${NCU_TOP:-14} | cut -c1-120
  done
fi
if [ -n "${NCU_DETAIL:-}" ]; then # ncu's full set of the third launch of the kernel matching this regex (new build)
  KERNEL=$NCU_DETAIL CONFIG=8192x4 bash bench/device_kernel_detail.sh ncu_detail
  echo "ncu detail $(( $(date +%s) - T0 )) s"
fi
python3 - $OUT <<'PY'
import json, sys, os
o = sys.argv[1]
rows = lambda f: [json.loads(l) for l in open(f) if l.startswith("{")] if os.path.exists(f) else []
t = {(r["seq"], r["batch"]): r for r in rows(o + "/torch.jsonl")}
for b in os.environ.get("BUILDS", "old new").split():
    for r in rows(o + f"/e2e_{b}.jsonl"):
        ref = t.get((r["seq"], r["batch"]))
        print(f"{b} {r['seq']} x {r['batch']} {r['ms_per_step']:.1f} ms mem {r.get('device_used_gib')} GiB"
              + (f" torch {ref['ms_per_step']:.1f} ms {r['tokens_per_s'] / ref['tokens_per_s']:.3f}x" if ref else ""))
PY
