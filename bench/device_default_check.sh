#!/usr/bin/env bash
# One device call (~6 min) for the API defaults as built: the flash, model and sparse GPU tests,
# the trainer's environment checks, the dense bench at T = 1k..16k with kernel variants beside
# the API (FWD_VARIANTS, BWD_VARIANTS; default the API's two instances of each: forward 8
# ping-pong and 10 persistent, backward 22 alternate a CTA per tile and 23 its persistent twin,
# 2 rounds; SEQS, default 1024,4096,8192,16384; BENCH_S its time limit), an ncu census of one
# dense step's flash kernels at 1k x 64, the sparse timing, and end to end at 16k x 2 and 8k x 4
# (dense, hash nb=16) against compiled PyTorch.
# Same carry and preparation as bench/device_ws_check.sh. Logs under $OUT, tables last.
set -u
. bench/device_env.sh
SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=30 bash tests/gpu/run_gpu.sh carry/flash/bin > $OUT/flash.log 2>&1
echo "flash tests: $(tail -1 $OUT/flash.log)"; grep -iE "fail|mismatch" $OUT/flash.log | head -3
timeout 60 $W/main/test_model_cuda > $OUT/model.log 2>&1; echo "model: rc $? $(tail -1 $OUT/model.log)"
TRAIN=carry/run/train timeout 90 bash tests/gpu/test_attn_env.sh > $OUT/attn_env.log 2>&1; echo "env checks: rc $? $(tail -1 $OUT/attn_env.log)"
timeout 90 $W/main/test_sparse_attn --time > $OUT/sparse.log 2>&1; echo "sparse: rc $? $(tail -1 $OUT/sparse.log) ($(el) s)"
grep -iE "fail|mismatch" $OUT/sparse.log | head -3
timeout ${BENCH_S:-180} python3 bench/attention/bench_dense.py --lib carry/flash/libflash_bench.so --seqs ${SEQS:-1024,4096,8192,16384} --variants --rounds 2 \
  --fwd-variants ${FWD_VARIANTS:-8,10} --bwd-variants ${BWD_VARIANTS:-22,23} --out $OUT/bench.jsonl > $OUT/bench.log 2>&1; echo "bench rc $? ($(el) s)"
timeout 50 ncu --clock-control none --kernel-name-base demangled --kernel-name regex:flash --metrics gpu__time_duration.sum \
  --csv --page raw carry/run/bench_step --seq 1024 --batch 64 --steps 1 --warmup 0 --mode dense > $OUT/ncu_1k.csv 2> $OUT/ncu_1k.err
echo "ncu rc $? ($(el) s)"
for run in 16384x2/dense 16384x2/hash_sparse:16 8192x4/dense 8192x4/hash_sparse:16; do
  IFS=/ read c m <<< "$run"
  timeout 25 carry/run/bench_step --seq ${c%x*} --batch ${c#*x} --steps 5 --warmup 2 --mode ${m%%:*} --buckets ${m#*:} \
    --drop ${m#*:} >> $OUT/e2e.jsonl 2>> $OUT/e2e.err || echo "bench_step $run failed" >> $OUT/e2e.err
done
left=$(( ${TORCH_BY:-330} - $(el) )); echo "torch compile with $left s"
[ $left -gt 30 ] && timeout $left python3 bench/e2e/torch_gpt.py --modes compile --configs 16384x2,8192x4 --steps 5 --warmup 2 >> $OUT/e2e.jsonl 2>> $OUT/e2e.err
tail -2 $OUT/e2e.err
echo "== tables ($(el) s)"
grep -A7 "^| kernel" $OUT/sparse.log | grep -E "^\| kernel|sm90 cta/tile" | cut -c1-150
echo "== flash kernels of one dense step at 1k x 64 (12 layers)"; python3 bench/e2e/ncu_kernel_sum.py $OUT/ncu_1k.csv | cut -c1-150
python3 - $OUT/bench.jsonl $OUT/e2e.jsonl <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("T %5d cudnn fwd %.3f fb %.3f | ours fwd %.3f (%.2fx) fb %.3f (%.2fx) bwd %.3f"
          % (r["T"], r["cudnn_fwd"], r["cudnn_fb"], r["ours_fwd"], r["cudnn_fwd"] / r["ours_fwd"], r["ours_fb"],
             r["cudnn_fb"] / r["ours_fb"], r.get("ours_bwd_only", 0)))
    for k in ("fwd_variants", "bwd_variants"):
        for name, m in r.get(k, {}).items():
            print(f"   {k[:3]} {name:<58} {m['ms']:.3f} ms ({' '.join(f'{x:.3f}' for x in m['runs'])})")
rows = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
for r in rows:
    ref = [x for x in rows if x["trainer"] == "torch-compile" and x["seq"] == r["seq"] and x["batch"] == r["batch"]]
    mem = r.get("device_used_gib", r.get("peak_reserved_gib", ""))
    print(f"{r['trainer']:<22}{r['seq']} x {r['batch']} {r['ms_per_step']:8.1f} ms {r['tokens_per_s']:9.0f} tok/s "
          + (f"{r['tokens_per_s'] / ref[0]['tokens_per_s']:.2f}x" if ref else "") + f" mem {mem} GiB")
PY
echo "total $(el) s"
