#!/usr/bin/env bash
# One device call (~5 min) for a kernel change against the build before it: every GPU test of
# the new build (bench/device_matrix_check.sh), then, interleaved, the Hopper sparse timing
# (test_sparse_attn --time-only, B 4 T 16384 H 12) of the old and new builds (ROUNDS, default
# 3), the dense API against cuDNN (bench_dense.py, 16k and 8k) of each, and end to end
# (bench_step 16k x 2: hash nb=16, qk 0.5; the new build with one CTA per tile and persistent).
# Carry: as bench/device_ws_check.sh, plus carry/base/base.tar.xz (the old build's
# test_sparse_attn, bench_step and libflash_bench.so; made by bench/build_base.sh). Logs under
# $OUT (pack them: only 8 files come back), a table last.
set -u
. bench/device_env.sh
B=/tmp/base; mkdir -p $B && tar xJf carry/base/base.tar.xz -C $B
bash bench/device_matrix_check.sh > $OUT/matrix.log 2>&1; grep -E "passed|rc " $OUT/matrix.log | sed 's/^/  /'
for r in $(seq ${ROUNDS:-3}); do
  for v in old new; do
    bin=$W/main/test_sparse_attn; [ $v = old ] && bin=$B/test_sparse_attn
    SPARSE_TEST_HOPPER_ONLY=1 timeout 60 $bin --time-only > $OUT/time_${v}_$r.log 2>&1 || echo "time $v $r: rc $?"
  done
done
echo "sparse timing done ($(el) s)"
for v in old new; do
  lib=carry/flash/libflash_bench.so; [ $v = old ] && lib=$B/libflash_bench.so
  timeout 150 python3 bench/attention/bench_dense.py --lib $lib --seqs 8192,16384 --rounds ${ROUNDS:-3} \
    --out $OUT/dense_$v.jsonl > $OUT/dense_$v.log 2>&1 || echo "dense $v: rc $?"
done
echo "dense done ($(el) s)"
for run in new/0/hash_sparse new/-1/hash_sparse old/0/hash_sparse new/0/qk_sparse new/-1/qk_sparse old/0/qk_sparse; do
  IFS=/ read v g m <<< "$run"
  bin=carry/run/bench_step; [ $v = old ] && bin=$B/bench_step
  echo -n "$v grid $g " >> $OUT/e2e.txt
  timeout 40 $bin --seq 16384 --batch 2 --steps 8 --warmup 2 --mode $m --buckets 16 --drop 0.5 --sparse-grid $g \
    >> $OUT/e2e.txt 2>> $OUT/e2e.err || echo "bench_step $run failed" >> $OUT/e2e.err
done
echo "== tables ($(el) s)"
for v in old new; do
  echo "sparse $v (all nd, per round):"
  for m in "hash nb=16 sm90 cta" "qk drop=0.5 sm90 cta" "hash nb=16 sm90 pers" "qk drop=0.5 sm90 pers" "qk drop=0.7 sm90 cta" "hash nb=64 sm90 cta"; do
    echo "  $m: $(grep -h "| $m" $OUT/time_${v}_*.log | awk -F'|' '{printf "fwd %s bwd %s all %s; ", $5, $6, $8}')"
  done
done
for v in old new; do
  python3 -c "
import json,sys
for l in open('$OUT/dense_$v.jsonl'):
    r=json.loads(l); print('dense $v T %5d cudnn fb %.3f ours fwd %.3f bwd %.3f fb %.3f (%.3fx)' % (r['T'], r['cudnn_fb'], r['ours_fwd'], r.get('ours_bwd_only',0), r['ours_fb'], r['cudnn_fb']/r['ours_fb']))
"
done
cat $OUT/e2e.txt | python3 -c "
import sys,json
for l in sys.stdin:
    h,_,j=l.partition('{'); r=json.loads('{'+j); print(h, r['trainer'], '%.1f ms' % r['ms_per_step'])
"
tail -3 $OUT/e2e.err
echo "total $(el) s"
