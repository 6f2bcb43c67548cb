#!/usr/bin/env bash
# One device call (~350 s) for the warp-specialised kernels' head groups (flash_ws.cuh,
# ws_tile_rank; FLASH_HEAD_GROUP, flash_launch.cuh): the GPU tests under the default and under
# groups of 1 and 5 heads (an uneven last group), then, one process per setting (the variable
# is read once), the dense bench at T = 1k..16k, the sparse timing, and bench_step end to end,
# with HEAD_GROUPS (default "all default 4 8 16 32"; "all" is the order before groups). Same carry
# as bench/device_ws_check.sh (carry/run, carry/ws, carry/flash/lib, carry/flash/libflash_bench.so).
# Logs under $OUT, tables last.
set -u
. bench/device_env.sh
if [ -z "${SKIP_TESTS:-}" ]; then # SKIP_TESTS=1: the timings alone
SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=30 bash tests/gpu/run_gpu.sh carry/flash/bin > $OUT/flash.log 2>&1
echo "flash tests: $(tail -1 $OUT/flash.log) ($(el) s)"; grep -iE "fail|mismatch" $OUT/flash.log | head -3
timeout 60 $W/main/test_model_cuda > $OUT/model.log 2>&1; echo "model: rc $? $(tail -1 $OUT/model.log)"
timeout 90 $W/main/test_sparse_attn > $OUT/sparse.log 2>&1; echo "sparse: rc $? $(tail -1 $OUT/sparse.log) ($(el) s)"
for g in 1 5; do
  FLASH_HEAD_GROUP=$g SPARSE_TEST_HOPPER_ONLY=1 timeout 70 $W/main/test_sparse_attn > $OUT/sparse_g$g.log 2>&1
  echo "sparse, groups of $g heads: rc $? $(tail -1 $OUT/sparse_g$g.log) ($(el) s)"; grep -iE "fail|mismatch" $OUT/sparse_g$g.log | head -3
done
fi
for g in ${HEAD_GROUPS:-all default 4 8 16 32}; do
  [ $g = default ] && unset FLASH_HEAD_GROUP || export FLASH_HEAD_GROUP=$g
  timeout 60 python3 bench/attention/bench_dense.py --lib carry/flash/libflash_bench.so --seqs 1024,4096,8192,16384 \
    --out $OUT/dense_$g.jsonl > $OUT/dense_$g.log 2>&1 || echo "dense $g: rc $?"
  SPARSE_TEST_HOPPER_ONLY=1 timeout 40 $W/main/test_sparse_attn --time-only > $OUT/time_$g.log 2>&1 || echo "time $g: rc $?"
  for run in 16384x2/dense 4096x16/dense 16384x2/hash_sparse:16; do
    IFS=/ read c m <<< "$run"
    extra=""; [ "$m" != "${m%%:*}" ] && extra="--buckets ${m#*:}"
    timeout 25 carry/run/bench_step --seq ${c%x*} --batch ${c#*x} --steps 4 --warmup 2 --mode ${m%%:*} $extra \
      >> $OUT/e2e_$g.jsonl 2>> $OUT/e2e.err || echo "bench_step $g $run failed" >> $OUT/e2e.err
  done
  echo "group $g done ($(el) s)"
done
unset FLASH_HEAD_GROUP
echo "== tables ($(el) s)"
python3 - $OUT ${HEAD_GROUPS:-all default 4 8 16 32} <<'PY'
import json, os, sys
out, groups = sys.argv[1], sys.argv[2:]
print("dense, ms: T | cuDNN fwd / fb | per group: ours fwd / fb (x cuDNN fb)")
rows = {}
for g in groups:
    p = f"{out}/dense_{g}.jsonl"
    for l in open(p) if os.path.exists(p) else []:
        r = json.loads(l); rows.setdefault(r["T"], {})[g] = r
for T in sorted(rows):
    cells = [f"{g}: {r['ours_fwd']:.3f} / {r['ours_fb']:.3f} ({r['cudnn_fb'] / r['ours_fb']:.2f}x, cuDNN {r['cudnn_fb']:.3f})"
             for g, r in rows[T].items()]
    print(f"  T {T:5d} | " + " | ".join(cells))
print("sparse (test_sparse_attn --time-only), fwd / bwd / all, ms")
for g in groups:
    p = f"{out}/time_{g}.log"
    for l in open(p) if os.path.exists(p) else []:
        if l.startswith("Timing"):
            print(f"  {g:>7}: dense {l.split('Dense: ')[1].split(';')[0].strip()}")
        if l.startswith("| ") and "sm90 pers" in l:
            f = [x.strip() for x in l.split("|")]
            print(f"  {g:>7}: {f[1]:<24} {f[4]} / {f[5]} / {f[7]}")
print("end to end (bench_step), ms a step")
for g in groups:
    p = f"{out}/e2e_{g}.jsonl"
    cells = [f"{r['seq']}x{r['batch']} {r['trainer']} {r['ms_per_step']:.1f}"
             for r in (json.loads(l) for l in open(p) if l.startswith("{"))] if os.path.exists(p) else []
    print(f"  {g:>7}: " + " | ".join(cells))
PY
echo "total $(el) s"
