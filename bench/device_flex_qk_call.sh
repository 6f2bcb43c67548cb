#!/usr/bin/env bash
# One device call for issue 6: the FlexAttention comparison (bench/device_flex_check.sh, main's
# carry/run), then, in the time left, branch wip/qk-fwd-keys's check (its binaries in carry/qk:
# bash bench/build_branch_carry.sh). Carry: carry/run, carry/qk, carry/flash/lib. FLEX_LIMIT and
# CALL_LIMIT (seconds) fit it to the device time left; NBS / DROPS trim the Flex sweep. Logs
# under $OUT (pack them), the tables last.
set -u
OUT=${OUT:-/tmp/out}; T0=$(date +%s)
FLEX_LIMIT=${FLEX_LIMIT:-400} bash bench/device_flex_check.sh > $OUT/flex.txt 2>&1
left=$(( ${CALL_LIMIT:-580} - ($(date +%s) - T0) ))
echo "flex done after $(( $(date +%s) - T0 )) s; the qk check gets $left s"
if [ -d carry/qk ] && [ $left -gt 30 ]; then
    rm -rf carry/ws && mv carry/run carry/run_main && cp -r carry/qk/ws carry/ws && cp -r carry/qk/run carry/run
    timeout $left bash carry/qk/device_qk_keys_check.sh > $OUT/qk_check.log 2>&1; echo "qk check rc $?"
    rm -rf carry/run && mv carry/run_main carry/run
    tail -14 $OUT/qk_check.log
fi
cat $OUT/flex.txt
