#!/usr/bin/env bash
# One device call (~3 min) for branch wip/qk-fwd-keys: qk_sparse's Hopper forward on 128 x 128
# tiles (SPARSE_QK_FWD_KEYS=128) against the default 128 x 64: the sparse GPU tests under 128
# (every Hopper grid), three interleaved rounds of test_sparse_attn --time-only under each, and
# an ncu census of the qk forward kernel under each (bench_step 16k x 2, qk 0.5). Same carry as
# bench/device_ws_check.sh. Logs under $OUT (pack them), a table last.
set -u
. bench/device_env.sh
SPARSE_QK_FWD_KEYS=128 SPARSE_TEST_HOPPER_ONLY=1 timeout 80 $W/main/test_sparse_attn > $OUT/sparse_keys128.log 2>&1
echo "sparse tests, SPARSE_QK_FWD_KEYS=128: rc $? $(tail -1 $OUT/sparse_keys128.log) ($(el) s)"
grep -iE "fail|mismatch" $OUT/sparse_keys128.log | head -3
for r in 1 2 3; do
  for k in 64 128; do
    SPARSE_QK_FWD_KEYS=$k SPARSE_TEST_HOPPER_ONLY=1 timeout 60 $W/main/test_sparse_attn --time-only > $OUT/time_${k}_$r.log 2>&1 || echo "time $k $r: rc $?"
  done
done
echo "== qk rows (fwd / bwd / all), per round ($(el) s)"
for k in 64 128; do
  for m in "qk drop=0.5 sm90 cta" "qk drop=0.5 sm90 pers" "qk drop=0.7 sm90 pers"; do
    echo "  keys $k $m: $(grep -h "| $m" $OUT/time_${k}_*.log | awk -F'|' '{printf "%s/%s/%s ", $5+0, $6+0, $8+0}')"
  done
done
for k in 64 128; do
  SPARSE_QK_FWD_KEYS=$k PROFS=fwd_qk bash bench/device_prof_ws.sh > $OUT/prof_$k.log 2>&1
  mkdir -p $OUT/prof_$k && mv $OUT/prof/* $OUT/prof_$k/ 2>/dev/null
done
for k in 64 128; do grep -E "Duration|Issue Slots Busy|Eligible Warps" $OUT/prof_$k.log | sed "s/^/  keys $k ncu: /"; done
