#!/usr/bin/env bash
# Runs every GPU test binary (test_* in the folder given as $1, default build/tests/gpu; this
# script builds nothing) and every tests/gpu/test_*.sh script, each with a time limit
# ($GPU_TEST_TIMEOUT seconds, default 600) and prints the summed "N passed, N failed" as the
# last line. A test that crashes, times out or prints no summary counts as one failure; no
# binary at all is a failure too (a GPU suite that silently ran nothing would look green).
set -u
cd "$(dirname "$0")/../.."
dir=${1:-build/tests/gpu}
total_pass=0; total_fail=0; ran=0
# Binaries first, then the scripts of tests/gpu (they drive ./train; skipped with SKIP_GPU_SCRIPTS=1).
scripts=""
[ "${SKIP_GPU_SCRIPTS:-0}" = 1 ] || scripts=$(ls tests/gpu/test_*.sh 2>/dev/null)
for t in "$dir"/test_* $scripts; do
    [ -f "$t" ] || continue
    case "$t" in *.d|*.o) continue;; esac
    case "$t" in *.sh) ;; *) [ -x "$t" ] || continue;; esac
    ran=$((ran + 1))
    name=$(basename "$t")
    echo "=== $name"
    start=$(date +%s)
    if [ "${t%.sh}" != "$t" ]; then out=$(timeout "${GPU_TEST_TIMEOUT:-600}" bash "$t" 2>&1); rc=$?
    else out=$(timeout "${GPU_TEST_TIMEOUT:-600}" "$t" 2>&1); rc=$?; fi
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
