#!/usr/bin/env bash
# On the GPU machine, from the repository root, after `scripts/paper_carry.sh [TEST ...]` here
# (run with carry = ["carry/paper", "carry/corpus_part1"]): GPU tests first, then paper runs,
# each run under its own limit and packed on its own (OUT/NAME/paper_runs.tgz), so a run cut
# off by the command's 10-minute limit loses only itself. At most 8 files come back from $OUT:
# the test logs go into one OUT/tests.tgz.
#   bash scripts/paper_device.sh [--tests "TEST ..."] [--gate] [--timing "CONFIG ..."]
#        [--late-tests "TEST ..."] [--timeout S] CONFIG ...
#   --tests       test programs from carry/paper/gpu_tests.tar.xz to run before the runs
#   --gate        skip CONFIGs named *center* when a test failed (they rely on the GPU plan)
#   --timing      after the first CONFIG: short runs of these configs (40 steps, no evaluation
#                 until the last) for same-machine step-time ratios, into OUT/timing/
#   --late-tests  test programs to run after the runs (when time is left)
#   --timeout S   limit of each run (default 240 s)
# CONFIG: as for scripts/run_paper.sh ("scaled/8k_dense", "extra/8k_hash16_center").
set -uo pipefail
cd "$(dirname "$0")/.."
die() { echo "paper_device: error: $*" >&2; exit 2; }
tests="" late="" timing="" gate=0 limit=240 configs=()
while [ $# -gt 0 ]; do
    case "$1" in
    --tests | --late-tests | --timing | --timeout)
        [ $# -ge 2 ] || die "$1 needs a value"
        case "$1" in --tests) tests=$2 ;; --late-tests) late=$2 ;; --timing) timing=$2 ;; --timeout) limit=$2 ;; esac
        shift 2 ;;
    --gate) gate=1; shift ;;
    -*) die "unknown option $1" ;;
    *) configs+=("$1"); shift ;;
    esac
done
: "${OUT:?OUT must name the folder whose files come back}"
if [ -f carry/paper/trainer.tar.xz ]; then tar xJf carry/paper/trainer.tar.xz -C carry/paper || die "cannot unpack carry/paper/trainer.tar.xz"; fi
export LD_LIBRARY_PATH=$PWD/carry/paper/lib:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
logs=$(mktemp -d) bins=$(mktemp -d)
# The test programs go into one folder per phase, each run by tests/gpu/run_gpu.sh (the same
# runner as `make test-gpu`: time limit, crash and missing-summary handling, summed counts).
stage_tests() { # PHASE TEST...: copies the named programs into $bins/PHASE
    local phase=$1; shift
    mkdir -p "$bins/$phase"
    for t in "$@"; do
        [ -x "$bins/all/$t" ] || die "$t is not in carry/paper/gpu_tests.tar.xz (scripts/paper_carry.sh $t)"
        cp "$bins/all/$t" "$bins/$phase/"
    done
}
if [ -n "$tests$late" ]; then
    [ -f carry/paper/gpu_tests.tar.xz ] || die "no carry/paper/gpu_tests.tar.xz (scripts/paper_carry.sh TEST ...)"
    mkdir -p "$bins/all" && tar xJf carry/paper/gpu_tests.tar.xz -C "$bins/all"
    stage_tests first $tests
    stage_tests late $late
fi
run_tests() { # PHASE: runs $bins/PHASE, prints the summaries, repacks OUT/tests.tgz
    SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=300 bash tests/gpu/run_gpu.sh "$bins/$1" >"$logs/$1.log" 2>&1
    local rc=$?
    grep -E "^--- |^!!! |FAIL|plan build" "$logs/$1.log" | head -n 20
    tail -n 1 "$logs/$1.log"
    tar czf "$OUT/tests.tgz" -C "$logs" .
    return $rc
}
ok=1
if [ -n "$tests" ]; then run_tests first || ok=0; fi
unpack=(--unpack carry/corpus_part1)
paper() { # NAME run_paper-args...: one packed folder per call; the corpus is unpacked once
    local d=$OUT/$1; shift
    mkdir -p "$d"
    bash scripts/run_paper.sh "${unpack[@]}" --train carry/paper/train --out "$d" --tar "$@" 2>&1 | tail -n 6
    unpack=()
}
first=1
for c in "${configs[@]}"; do
    if [ $gate = 1 ] && [ $ok = 0 ]; then case "$c" in *center*) echo "skipped $c: a test failed"; continue ;; esac; fi
    paper "$(basename "$c")" --timeout "$limit" "$c"
    if [ $first = 1 ] && [ -n "$timing" ]; then
        paper timing --timeout 120 --set train.max_steps=40 --set train.eval_every=1000 $timing
    fi
    first=0
done
if [ -n "$late" ]; then run_tests late; fi
ls -R "$OUT"
