#!/usr/bin/env bash
# One device call (~450 s) for the fused backward's tiles and schedules (attention/cuda/NOTES.md
# v7-v8): the flash GPU tests under each (FLASH_BWD_QUERY_TILE, FLASH_BWD_SCHEDULE) pair, the
# model test with the wide tile, the wide instances' register spills in the SASS, the dense
# bench (API + the fused variants 11, 15-20 against cuDNN), the sparse tests and timing under
# each schedule, and end to end at 16k x 2 and 8k x 4 against compiled PyTorch per tile and
# schedule. Same carry and preparation as bench/device_ws_check.sh. Logs under $OUT; the most
# important parts first, each bounded.
set -u
. bench/device_env.sh

# PARTS="1 2" (default): 1 = tests, spills and the bench (~200 s), 2 = end to end and sparse
# (~300 s); two calls on a warm machine lose less when one is taken back mid-run.
part() { case " ${PARTS:-1 2} " in *" $1 "*) return 0;; esac; return 1; }
if part 1; then
echo "== flash tests ($(el) s)"
for cfg in 64/lockstep 128/lockstep 128/deferred 64/deferred 64/pingpong 128/pingpong; do
  t=${cfg%/*}; s=${cfg#*/}
  FLASH_BWD_QUERY_TILE=$t FLASH_BWD_SCHEDULE=$s SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=30 \
    bash tests/gpu/run_gpu.sh carry/flash/bin > $OUT/flash_${t}_$s.log 2>&1
  echo "tile $t $s: $(tail -1 $OUT/flash_${t}_$s.log)"; grep -iE "fail|mismatch" $OUT/flash_${t}_$s.log | head -3
done
FLASH_BWD_QUERY_TILE=128 timeout 60 $W/main/test_model_cuda > $OUT/model_128.log 2>&1; echo "model, tile 128: rc $? $(tail -1 $OUT/model_128.log)"
TRAIN=carry/run/train timeout 90 bash tests/gpu/test_attn_env.sh > $OUT/attn_env.log 2>&1; echo "trainer env checks: rc $? $(tail -1 $OUT/attn_env.log)"; grep FAIL $OUT/attn_env.log

echo "== spills ($(el) s)"
if command -v cuobjdump >/dev/null; then
  cuobjdump -res-usage carry/flash/libflash_bench.so 2>/dev/null | grep -A1 "flash_bwd_dkdv_sm90_ws_kernel.*Tiles.*ELb1E" |
    grep -oE "Function [^:]*Tiles[^N]*|REG:[0-9]+ STACK:[0-9]+|LOCAL:[0-9]+" | paste - - - > $OUT/res_usage.txt
  cat $OUT/res_usage.txt | sed 's/Function _ZN5flash29flash_bwd_dkdv_sm90_ws_kernelINS_14Sm90BwdWsTiles//'
  f=$(cuobjdump -sass carry/flash/libflash_bench.so 2>/dev/null | grep -oE "Function : _ZN5flash29flash_bwd_dkdv_sm90_ws_kernelINS_14Sm90BwdWsTilesILi2ELi2ELb1ELb0ELb0ELi128EEENS_17DenseCausalPolicyELb0EEEvNS_11FlashParamsET0_" | head -1 | sed 's/Function : //')
  [ -n "$f" ] && cuobjdump -sass -fun "$f" carry/flash/libflash_bench.so > $OUT/wide_lockstep.sass 2>/dev/null
  [ -s $OUT/wide_lockstep.sass ] && { echo "wide lockstep SASS: $(wc -l < $OUT/wide_lockstep.sass) lines, STL $(grep -c STL $OUT/wide_lockstep.sass), LDL $(grep -c LDL $OUT/wide_lockstep.sass), HGMMA $(grep -c HGMMA $OUT/wide_lockstep.sass)"; }
else echo "no cuobjdump"; fi

echo "== bench ($(el) s)"
timeout 120 python3 bench/attention/bench_dense.py --lib carry/flash/libflash_bench.so --seqs 8192,16384 --variants \
  --fwd-variants 7,12,13 --bwd-variants 11,15,16,18,19,20 --out $OUT/bench.jsonl > $OUT/bench.log 2>&1; echo "rc $?"
grep -E " variant " $OUT/bench.log
python3 - $OUT/bench.jsonl <<'PY'
import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l)
    print("T",r["T"],"cudnn fwd %.3f fb %.3f | ours fwd %.3f fb %.3f (%.2fx cudnn) bwd alone %.3f"%(r["cudnn_fwd"],r["cudnn_fb"],r["ours_fwd"],r["ours_fb"],r["cudnn_fb"]/r["ours_fb"],r.get("ours_bwd_only",0)))
    for k,v in r.get("fwd_variants",{}).items(): print("   fwd %-40s %.3f ms err %.2e (%.2fx cudnn fwd)"%(k,v["ms"],v["err"],r["cudnn_fwd"]/v["ms"]))
    for k,v in r.get("bwd_variants",{}).items(): print("   bwd %-40s %.3f ms err %.2e  fwd+this %.3f -> %.2fx cudnn"%(k,v["ms"],v["err"],r["ours_fwd"]+v["ms"],r["cudnn_fb"]/(r["ours_fwd"]+v["ms"])))
PY

fi
if part 2; then
T0=$(date +%s) # part 2's limits count from its own start
echo "== e2e ($(el) s)"
for run in 16384x2/dense/64/lockstep 16384x2/dense/128/lockstep 16384x2/hash_sparse:16/64/lockstep \
           16384x2/hash_sparse:16/128/lockstep 16384x2/dense/64/deferred 16384x2/dense/128/deferred \
           16384x2/hash_sparse:16/64/deferred 8192x4/dense/64/lockstep 8192x4/dense/128/lockstep; do
  IFS=/ read c m t s <<< "$run"
  [ $(el) -lt ${E2E_BY:-150} ] || break
  FLASH_BWD_QUERY_TILE=$t FLASH_BWD_SCHEDULE=$s timeout 25 carry/run/bench_step --seq ${c%x*} --batch ${c#*x} --steps 5 --warmup 2 \
    --mode ${m%%:*} --buckets ${m#*:} --drop ${m#*:} > $OUT/e2e.tmp 2>> $OUT/e2e.err || echo "bench_step $run failed" >> $OUT/e2e.err
  python3 -c "import json,sys; [print(json.dumps(dict(json.loads(l), trainer=json.loads(l)['trainer']+'/$t/$s'))) for l in open(sys.argv[1]) if l.startswith('{')]" $OUT/e2e.tmp >> $OUT/e2e.jsonl
done
left=$(( ${TORCH_BY:-260} - $(el) )); echo "torch compile with $left s"
[ $left -gt 30 ] && timeout $left python3 bench/e2e/torch_gpt.py --modes compile --configs 16384x2,8192x4 --steps 5 --warmup 2 >> $OUT/e2e.jsonl 2>> $OUT/e2e.err
python3 - $OUT/e2e.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for r in rows:
    ref = [x for x in rows if x["trainer"] == "torch-compile" and x["seq"] == r["seq"] and x["batch"] == r["batch"]]
    print(f"{r['trainer']:<30}{r['seq']} x {r['batch']} {r['ms_per_step']:9.1f} ms {r['tokens_per_s']:9.0f} tok/s " + (f"{r['tokens_per_s'] / ref[0]['tokens_per_s']:.2f}x" if ref else ""))
PY
tail -2 $OUT/e2e.err

echo "== sparse ($(el) s)"
for cfg in 64/lockstep 128/lockstep 64/deferred 128/deferred; do
  t=${cfg%/*}; s=${cfg#*/}
  [ $(el) -lt ${SPARSE_BY:-300} ] || break
  only=1; [ $cfg = 64/lockstep ] && only=0
  SPARSE_TEST_HOPPER_ONLY=$only FLASH_BWD_QUERY_TILE=$t FLASH_BWD_SCHEDULE=$s timeout 70 $W/main/test_sparse_attn --time > $OUT/sparse_${t}_$s.log 2>&1
  echo "sparse tile $t $s: rc $? $(tail -1 $OUT/sparse_${t}_$s.log)"; grep -iE "fail|mismatch" $OUT/sparse_${t}_$s.log | head -3
  grep -E "sm90 cta/tile|^Timing" $OUT/sparse_${t}_$s.log | cut -c1-150
done
fi
echo "total $(el) s"
