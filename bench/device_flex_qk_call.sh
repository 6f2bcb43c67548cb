#!/usr/bin/env bash
# One device call for issue 6: the FlexAttention comparison (bench/device_flex_check.sh, main's
# carry/run), then, in the time left, qk_sparse's 128-key Hopper forward of branch
# wip/qk-fwd-keys (its test_sparse_attn from carry/base: `bash bench/build_base.sh
# wip/qk-fwd-keys` here): the sparse GPU tests with SPARSE_QK_FWD_KEYS=128, then three
# interleaved rounds of its --time-only timing with 64 and 128 keys. Carry: carry/run,
# carry/base, carry/flash/lib. FLEX_LIMIT and CALL_LIMIT (seconds) fit it to the device time
# left; NBS / DROPS trim the Flex sweep. Logs under $OUT (pack them), the tables last.
set -u
OUT=${OUT:-/tmp/out}; T0=$(date +%s); mkdir -p $OUT
left() { echo $(( ${CALL_LIMIT:-580} - ($(date +%s) - T0) )); }
FLEX_LIMIT=${FLEX_LIMIT:-400} bash bench/device_flex_check.sh > $OUT/flex.txt 2>&1
echo "flex done after $(( $(date +%s) - T0 )) s; the qk check gets $(left) s"
Q=/tmp/base; mkdir -p $Q && tar xJf carry/base/base.tar.xz -C $Q test_sparse_attn || exit 1
[ $(left) -gt 30 ] || { cat $OUT/flex.txt; exit 0; }
export LD_LIBRARY_PATH=$PWD/carry/flash/lib:$PWD/carry/run/lib:${LD_LIBRARY_PATH:-}
SPARSE_QK_FWD_KEYS=128 SPARSE_TEST_HOPPER_ONLY=1 timeout $(left) $Q/test_sparse_attn > $OUT/sparse_keys128.log 2>&1
echo "sparse tests, SPARSE_QK_FWD_KEYS=128: rc $? $(tail -1 $OUT/sparse_keys128.log)"
for r in 1 2 3; do for k in 64 128; do
  [ $(left) -gt 15 ] && SPARSE_QK_FWD_KEYS=$k SPARSE_TEST_HOPPER_ONLY=1 timeout $(left) $Q/test_sparse_attn --time-only \
    > $OUT/time_${k}_$r.log 2>&1
done; done
echo "== qk rows (fwd / bwd / all), per round"
for k in 64 128; do for m in "qk drop=0.5 sm90 cta" "qk drop=0.5 sm90 pers" "qk drop=0.7 sm90 pers"; do
  echo "  keys $k $m: $(grep -h "| $m" $OUT/time_${k}_*.log 2>/dev/null | awk -F'|' '{printf "%s/%s/%s ", $5+0, $6+0, $8+0}')"
done; done
cat $OUT/flex.txt
