#!/usr/bin/env bash
# One lean device call for the fused backward's schedules (FLASH_BWD_SCHEDULE, attention/cuda/
# NOTES.md v7), for when device time is short (~300 s): the flash GPU tests under each schedule,
# the dense bench (API + the schedule variants), the sparse tests and timing under each schedule
# (Hopper kernels only for the new ones), end to end at 16k x 2 against compiled PyTorch. Same
# carry and preparation as bench/device_ws_check.sh. Logs under $OUT.
set -u
. bench/device_env.sh
SCH="lockstep deferred pingpong"
for sch in $SCH; do
  FLASH_BWD_SCHEDULE=$sch SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=60 bash tests/gpu/run_gpu.sh carry/flash/bin > $OUT/flash_$sch.log 2>&1
  echo "flash tests $sch: $(tail -1 $OUT/flash_$sch.log) ($(el) s)"; grep -iE "fail|mismatch" $OUT/flash_$sch.log | head -3
done
timeout 70 python3 bench/attention/bench_dense.py --lib carry/flash/libflash_bench.so --seqs 8192,16384 --variants \
  --fwd-variants 11 --bwd-variants 15,16,17 --out $OUT/bench.jsonl > $OUT/bench.log 2>&1; echo "bench rc $? ($(el) s)"
grep -E " variant " $OUT/bench.log
python3 - $OUT/bench.jsonl <<'PY'
import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l)
    print("T",r["T"],"cudnn fwd %.3f fb %.3f | ours fwd %.3f fb %.3f (%.2fx) bwd alone %.3f"%(r["cudnn_fwd"],r["cudnn_fb"],r["ours_fwd"],r["ours_fb"],r["cudnn_fb"]/r["ours_fb"],r.get("ours_bwd_only",0)))
PY
for sch in $SCH; do
  only=1; [ $sch = lockstep ] && only=0
  SPARSE_TEST_HOPPER_ONLY=$only FLASH_BWD_SCHEDULE=$sch timeout 75 $W/main/test_sparse_attn --time > $OUT/sparse_$sch.log 2>&1
  echo "sparse $sch: rc $? $(tail -1 $OUT/sparse_$sch.log) ($(el) s)"; grep -iE "fail|mismatch" $OUT/sparse_$sch.log | head -3
  grep -E "sm90 cta/tile|sm90 persist|^Timing" $OUT/sparse_$sch.log | cut -c1-150
done
for sch in $SCH; do for m in hash_sparse:16 dense; do
  [ $(el) -lt ${E2E_BY:-230} ] || break
  FLASH_BWD_SCHEDULE=$sch timeout 25 carry/run/bench_step --seq 16384 --batch 2 --steps 5 --warmup 2 --mode ${m%%:*} \
    --buckets ${m#*:} --drop ${m#*:} > $OUT/e2e_$sch.tmp 2>> $OUT/e2e.err
  python3 -c "import json,sys; [print(json.dumps(dict(json.loads(l), trainer=json.loads(l)['trainer']+'/$sch'))) for l in open(sys.argv[1]) if l.startswith('{')]" $OUT/e2e_$sch.tmp >> $OUT/e2e.jsonl
done; done
left=$(( ${TORCH_BY:-300} - $(el) )); echo "torch compile with $left s"
[ $left -gt 20 ] && timeout $left python3 bench/e2e/torch_gpt.py --modes compile --configs 16384x2 --steps 5 --warmup 2 >> $OUT/e2e.jsonl 2>> $OUT/e2e.err
python3 - $OUT/e2e.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ref = [x for x in rows if x["trainer"] == "torch-compile"]
for r in rows:
    print(f"{r['trainer']:<28}{r['seq']} x {r['batch']} {r['ms_per_step']:9.1f} ms {r['tokens_per_s']:9.0f} tok/s " + (f"{r['tokens_per_s'] / ref[0]['tokens_per_s']:.2f}x" if ref else ""))
PY
tail -2 $OUT/e2e.err; echo "total $(el) s"
