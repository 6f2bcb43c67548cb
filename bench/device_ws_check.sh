#!/usr/bin/env bash
# One device call for the attention kernels (sessions 7-8): the flash GPU tests, the dense
# bench with variants, the sparse tests and timing (test_sparse_attn --time: every Hopper grid),
# the model tests, end to end against compiled PyTorch (bench_step, torch_gpt.py), scfa.py, the
# plan tests (profiled with nsys where the machine has it; the lent H100s have not). Each part
# is bounded so the whole fits one call (about 200 s); logs under $OUT. Prepare here:
#   bash bench/attention/build.sh carry/flash
#   make build/tests/gpu/{test_sparse_attn,test_model_cuda,test_plan_cuda}
#   tar cJf carry/ws/tests.tar.xz -C <dir holding main/ with those three binaries> main
#   bash bench/build_carry.sh            (carry/run: train, bench_step, libscfa.so, lib/)
# then run(carry = [carry/flash/bin, carry/flash/libflash_bench.so, carry/flash/lib, carry/ws,
# carry/run]) with `bash bench/device_ws_check.sh`.
set -u
. bench/device_env.sh
echo "== flash tests ($(el) s)"; SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=60 bash tests/gpu/run_gpu.sh carry/flash/bin > $OUT/flash_tests.log 2>&1; tail -1 $OUT/flash_tests.log
ok=$(tail -1 $OUT/flash_tests.log | grep -c "^[1-9][0-9]* passed, 0 failed")
grep -iE "fail|mismatch" $OUT/flash_tests.log | head -8
for sch in ${SCHEDULES:-}; do
  FLASH_BWD_SCHEDULE=$sch SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=60 bash tests/gpu/run_gpu.sh carry/flash/bin > $OUT/flash_tests_$sch.log 2>&1
  echo "flash tests, FLASH_BWD_SCHEDULE=$sch: $(tail -1 $OUT/flash_tests_$sch.log)"
done
if [ "$ok" = 1 ]; then
echo "== bench ($(el) s)"; timeout 110 python3 bench/attention/bench_dense.py --lib carry/flash/libflash_bench.so --seqs 8192,16384 --variants --fwd-variants 11 --bwd-variants 14,15,16,17 --out $OUT/bench.jsonl > $OUT/bench.log 2>&1; rc=$?; echo "rc $rc"
[ $rc = 0 ] || { grep " variant " $OUT/bench.log | tail -20; tail -3 $OUT/bench.log; }
python3 - $OUT/bench.jsonl <<'PY'
import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l)
    print("T",r["T"],"cudnn fwd %.3f fb %.3f | flash fb %.3f | ours fwd %.3f fb %.3f (%.2fx cudnn) det %.3f | err %s"%(r["cudnn_fwd"],r["cudnn_fb"],r["flash_fb"],r["ours_fwd"],r["ours_fb"],r["cudnn_fb"]/r["ours_fb"],r["ours_fb_det"],{k:round(v,5) for k,v in r["err_vs_cudnn"].items()}))
    for k,v in r.get("fwd_variants",{}).items(): print("   fwd %-36s %.3f ms err %.2e"%(k,v["ms"],v["err"]))
    for k,v in r.get("bwd_variants",{}).items(): print("   bwd %-36s %.3f ms err %.2e"%(k,v["ms"],v["err"]))
PY
fi
echo "== sparse ($(el) s)"; timeout 120 $W/main/test_sparse_attn --time > $OUT/sparse.log 2>&1; echo "rc $?"; grep -A20 "^Timing" $OUT/sparse.log | grep -v "^Sparse stages"; grep -iE "fail|mismatch" $OUT/sparse.log | head -5; tail -1 $OUT/sparse.log
for sch in ${SCHEDULES:-}; do
  SPARSE_TEST_HOPPER_ONLY=1 FLASH_BWD_SCHEDULE=$sch timeout 90 $W/main/test_sparse_attn --time > $OUT/sparse_$sch.log 2>&1; echo "sparse, FLASH_BWD_SCHEDULE=$sch: rc $? $(tail -1 $OUT/sparse_$sch.log)"
  grep -E "sm90 cta/tile|sm90 persist|^Timing" $OUT/sparse_$sch.log
done
echo "== model ($(el) s)"; timeout 60 $W/main/test_model_cuda > $OUT/model.log 2>&1; echo "rc $?"; tail -1 $OUT/model.log
if [ "$ok" = 1 ]; then
echo "== e2e ($(el) s)"
for c in 16384x2 8192x4; do for m in dense hash_sparse:16; do
  timeout 25 carry/run/bench_step --seq ${c%x*} --batch ${c#*x} --steps 5 --warmup 2 --mode ${m%%:*} --buckets ${m#*:} --drop ${m#*:} >> $OUT/e2e.jsonl 2>> $OUT/e2e.err || echo "bench_step $c $m failed" >> $OUT/e2e.err
done; done
# the sparse kernels' grid of a CTA per tile against the default (persistent), same step
timeout 25 carry/run/bench_step --seq 16384 --batch 2 --steps 5 --warmup 2 --mode hash_sparse --buckets 16 --sparse-grid 0 >> $OUT/e2e.jsonl 2>> $OUT/e2e.err || echo "bench_step a CTA per tile failed" >> $OUT/e2e.err
left=$(( ${TORCH_BY:-225} - $(el) )); echo "torch compile with $left s left"
timeout $left python3 bench/e2e/torch_gpt.py --modes compile --configs 16384x2,8192x4 --steps 5 --warmup 2 >> $OUT/e2e.jsonl 2>> $OUT/e2e.err
for sch in ${SCHEDULES:-}; do for m in dense hash_sparse:16; do
  [ $(el) -lt ${E2E_BY:-400} ] || break
  FLASH_BWD_SCHEDULE=$sch timeout 25 carry/run/bench_step --seq 16384 --batch 2 --steps 5 --warmup 2 --mode ${m%%:*} --buckets ${m#*:} --drop ${m#*:} > $OUT/e2e_$sch.tmp 2>> $OUT/e2e.err || echo "bench_step $sch $m failed" >> $OUT/e2e.err
  python3 -c "import json,sys; [print(json.dumps(dict(json.loads(l), trainer=json.loads(l)['trainer']+'/$sch'))) for l in open(sys.argv[1]) if l.startswith('{')]" $OUT/e2e_$sch.tmp >> $OUT/e2e.jsonl
done; done
python3 - $OUT/e2e.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def ratio(r, name):
    ref = [x for x in rows if x["trainer"] == name and x["seq"] == r["seq"] and x["batch"] == r["batch"]]
    return f"{r['tokens_per_s'] / ref[0]['tokens_per_s']:.2f}x" if ref else "-"
for r in rows:
    print(f"{r['trainer']:<22}{str(r['seq']) + ' x ' + str(r['batch']):>10}{r['ms_per_step']:>9.1f}{r['tokens_per_s']:>9.0f} {ratio(r, 'torch-compile'):>8}")
PY
tail -3 $OUT/e2e.err
[ -n "${SKIP_SCFA:-}" ] || { echo "== scfa ($(el) s)"; timeout $(( 240 - $(el) )) python3 bench/scfa.py --lib carry/run/libscfa.so --no-flex --with-dense --seqs 16384 --nbs 8,16,32,64 --drops 0.5,0.7 --reps 10 --out $OUT/scfa.json > $OUT/scfa.log 2>&1; echo "rc $?"; sed -n '/^ms, median/,$p' $OUT/scfa.log | head -30; }
fi
[ -n "${SKIP_PLAN:-}" ] && { echo "total $(el) s"; exit 0; }
echo "== plan ($(el) s)"
if command -v nsys >/dev/null; then
  timeout $(( 280 - $(el) )) nsys profile --stats=true --force-overwrite true -o /tmp/plan_prof $W/main/test_plan_cuda > $OUT/plan.log 2>&1; echo "rc $?"
  grep -E "centre|hash_bucket|Time \(%\)" $OUT/plan.log | head -8
  timeout $(( 305 - $(el) )) nsys profile --stats=true --force-overwrite true -o /tmp/sparse_prof $W/main/test_sparse_attn --time-only > $OUT/sparse_prof.log 2>&1; echo "rc $?"
  grep -A28 "cuda_gpu_kern_sum" $OUT/sparse_prof.log | cut -c1-160 | head -30
else
  echo "no nsys"; timeout $(( 280 - $(el) )) $W/main/test_plan_cuda > $OUT/plan.log 2>&1; echo "rc $?"
fi
grep "plan build" $OUT/plan.log; grep -E "^[0-9]+ passed" $OUT/plan.log
echo "total $(el) s"
