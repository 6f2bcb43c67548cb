#!/usr/bin/env bash
# Runs every CPU test binary (build/tests/test_*) and every test script (tests/test_*.sh),
# each with a time limit, and prints the summed "N passed, N failed" as the last line. A test
# that crashes, times out or prints no summary counts as one failure.
set -u
cd "$(dirname "$0")/.."
total_pass=0; total_fail=0
for t in build/tests/test_* tests/test_*.sh; do
    [ -f "$t" ] || continue
    case "$t" in *.d) continue;; esac
    name=$(basename "$t")
    echo "=== $name"
    start=$(date +%s)
    if [[ "$t" == *.sh ]]; then out=$(timeout 600 bash "$t" 2>&1); rc=$?; else out=$(timeout 600 "$t" 2>&1); rc=$?; fi
    echo "$out" | tail -n 40
    line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then
        echo "!!! $name: no summary line (exit $rc)"; total_fail=$((total_fail + 1)); continue
    fi
    p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "!!! $name: exit $rc"; fi
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    echo "--- $name: $p passed, $f failed ($(( $(date +%s) - start ))s)"
done
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
