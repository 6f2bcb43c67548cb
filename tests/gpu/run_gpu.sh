#!/usr/bin/env bash
# Runs every GPU test binary (test_* in the folder given as $1, default build/tests/gpu; this
# script builds nothing) with a time limit and prints the summed "N passed, N failed" as the
# last line. A test that crashes, times out or prints no summary counts as one failure; no
# binary at all is a failure too (a GPU suite that silently ran nothing would look green).
set -u
cd "$(dirname "$0")/../.."
dir=${1:-build/tests/gpu}
total_pass=0; total_fail=0; ran=0
for t in "$dir"/test_*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue;; esac
    ran=$((ran + 1))
    name=$(basename "$t")
    echo "=== $name"
    start=$(date +%s)
    out=$(timeout 600 "$t" 2>&1); rc=$?
    echo "$out" | tail -n 60
    line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then
        echo "!!! $name: no summary line (exit $rc)"; total_fail=$((total_fail + 1)); continue
    fi
    p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "!!! $name: exit $rc"; fi
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    echo "--- $name: $p passed, $f failed ($(( $(date +%s) - start ))s)"
done
if [ "$ran" -eq 0 ]; then echo "!!! no GPU test binaries in $dir"; total_fail=$((total_fail + 1)); fi
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
