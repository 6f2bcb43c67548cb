#!/usr/bin/env bash
# Runs a list of the paper's configs (configs/paper/, configs/paper/scaled/) one after the other,
# each under its own time limit, and collects what comparing them needs: OUT/NAME/ gets the run's
# log.jsonl, config.json, the trainer's console output (train.out) and the shard list it read
# (data.txt). A failed or timed-out run is reported and the next one starts; a summary table
# comes last. Then: scripts/compare_logs OUT/* (docs/RESULTS.md).
#
# usage: scripts/run_paper.sh --out DIR [options] CONFIG ...
#   CONFIG            a config file, or a name under configs/paper/ ("scaled/8k_dense", "16k_hash16")
#   --out DIR         where the collected files go, one folder per run (named as the config file)
#   --work DIR        where the trainer writes its run folders, checkpoints included (runs/paper)
#   --train BIN       the trainer (env TRAIN, default ./train)
#   --data PREFIX     the shards PREFIX_train_*.bin and PREFIX_val_*.bin (env DATA_PREFIX, default
#                     data/shards/corpus); overrides data.train / data.val of every config
#   --timeout S       wall-clock limit of each run in seconds (env RUN_TIMEOUT, default 540): the
#                     trainer gets SIGTERM, writes a checkpoint and stops (SIGKILL 30 s later)
#   --set KEY=VALUE   passed to every run (repeatable), e.g. --set train.max_steps=20
#   --unpack PART     first unpack a corpus part made by scripts/pack_corpus.sh (repeatable;
#                     scripts/unpack_corpus.sh PART)
#   --resume          continue runs whose work folder holds a checkpoint (./train --resume)
#   --keep-ckpts      keep the checkpoints of finished runs (default: deleted, 1.5 GB each)
#   --tar             end by packing OUT's run folders into OUT/paper_runs.tgz (and removing
#                     them): the GPU machine's tool brings back at most 8 files
#   --dry             print what would run, run nothing
# Exit status: 0 when every run finished, 1 when one failed or timed out, 2 on bad arguments.
#
# On the GPU machine (no network, files only through a 64 MiB carry; docs/RESULTS.md), after
# scripts/paper_carry.sh here:
#   export LD_LIBRARY_PATH=$PWD/carry/paper/lib:/usr/local/cuda/lib64
#   bash scripts/run_paper.sh --unpack carry/corpus_part1 --train carry/paper/train --out "$OUT" \
#        --tar configs/paper/scaled/8k_dense.json
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

usage() { sed -n '8,25p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run_paper: error: $*" >&2; exit 2; }

out="" work=runs/paper train=${TRAIN:-./train} data=${DATA_PREFIX:-data/shards/corpus}
limit=${RUN_TIMEOUT:-540} dry=0 resume=0 keep=0 pack=0
sets=() parts=() configs=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --out | --work | --train | --data | --timeout | --set | --unpack)
        [ $# -ge 2 ] || die "$1 needs a value"
        case "$1" in
        --out) out=$2 ;; --work) work=$2 ;; --train) train=$2 ;; --data) data=$2 ;;
        --timeout) limit=$2 ;; --set) sets+=(--set "$2") ;; --unpack) parts+=("$2") ;;
        esac
        shift 2 ;;
    --dry) dry=1; shift ;;
    --resume) resume=1; shift ;;
    --keep-ckpts) keep=1; shift ;;
    --tar) pack=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) configs+=("$1"); shift ;;
    esac
done
[ -n "$out" ] || die "--out DIR is required (see --help)"
[ ${#configs[@]} -gt 0 ] || die "no CONFIG given (see --help)"
[[ "$limit" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a whole number of seconds, got '$limit'"

# Config arguments -> files and run names; names must differ (they name the output folders).
files=() names=()
for c in "${configs[@]}"; do
    f=""
    for cand in "$c" "$root/configs/paper/$c" "$root/configs/paper/$c.json"; do
        [ -f "$cand" ] && { f=$cand; break; }
    done
    [ -n "$f" ] || die "config '$c' not found (a file, or a name under configs/paper/ such as scaled/8k_dense)"
    n=$(basename "$f" .json)
    [[ "$n" =~ ^[A-Za-z0-9._-]+$ ]] || die "$f: run names (config file names) may hold only letters, digits, '.', '_', '-'"
    for seen in "${names[@]}"; do [ "$seen" != "$n" ] || die "two configs are named $n: run them into different --out folders"; done
    files+=("$f") names+=("$n")
done
data_sets=(--set "data.train=${data}_train_*.bin" --set "data.val=${data}_val_*.bin")

# Checks that need the machine's files: fatal for a real run, notes for --dry.
problems=()
check_machine() {
    problems=()
    if [ ! -x "$train" ]; then
        problems+=("trainer $train not found or not executable (--train BIN or TRAIN=...)")
    elif missing=$(ldd "$train" 2>/dev/null | grep "not found"); then
        problems+=("$train misses shared libraries (set LD_LIBRARY_PATH, e.g. carry/paper/lib): $(echo $missing)")
    fi
    compgen -G "${data}_train_*.bin" > /dev/null || problems+=("no shards ${data}_train_*.bin (--data PREFIX; see docs/DATA.md)")
    compgen -G "${data}_val_*.bin" > /dev/null || problems+=("no shards ${data}_val_*.bin")
}

# What each run will do: "fresh", "resume", or a reason it cannot start.
plan_run() {
    local dir=$1
    if [ ! -e "$dir" ]; then echo fresh
    elif [ $resume -eq 1 ] && compgen -G "$dir/ckpt_*.bin" > /dev/null; then echo resume
    elif [ $resume -eq 1 ]; then echo "$dir holds no checkpoint to resume: remove it to start over"
    else echo "$dir already exists: pass --resume to continue it, or remove it"; fi
}

run_cmd() { # $1 = config file, $2 = run folder, $3 = fresh|resume
    if [ "$3" = resume ]; then cmd=("$train" --resume "$2" "${data_sets[@]}" "${sets[@]}")
    else cmd=("$train" --config "$1" --out "$2" "${data_sets[@]}" "${sets[@]}"); fi
}

if [ $dry -eq 1 ]; then
    for p in "${parts[@]}"; do echo "would unpack: bash $root/scripts/unpack_corpus.sh $p"; done
    [ ${#parts[@]} -gt 0 ] || { check_machine; for p in "${problems[@]}"; do echo "note: $p"; done; }
    for i in "${!files[@]}"; do
        how=$(plan_run "$work/${names[$i]}")
        echo "[$((i + 1))/${#files[@]}] ${names[$i]} (timeout ${limit}s) -> $out/${names[$i]}/"
        if [ "$how" = fresh ] || [ "$how" = resume ]; then
            run_cmd "${files[$i]}" "$work/${names[$i]}" "$how"
            echo "    $(printf '%q ' "${cmd[@]}")"
        else
            echo "    cannot start: $how"
        fi
    done
    [ $pack -eq 1 ] && echo "then: pack $out/<runs> into $out/paper_runs.tgz"
    exit 0
fi

for p in "${parts[@]}"; do
    bash "$root/scripts/unpack_corpus.sh" "$p" || die "unpacking $p failed"
done
check_machine
[ ${#problems[@]} -eq 0 ] || die "${problems[0]}"
mkdir -p "$out" "$work" || die "cannot create $out or $work"
shard_list() {
    for f in "${data}"_train_*.bin "${data}"_val_*.bin; do echo "$(basename "$f") $(stat -c %s "$f")"; done
}
echo "run_paper: ${#files[@]} run(s), trainer $train, shards ${data}_{train,val}_*.bin ($(shard_list | wc -l) files), timeout ${limit}s each"

# Console lines worth showing live: about ten step lines per run, every eval, errors, the end.
progress() {
    local line n total
    while IFS= read -r line; do
        case "$line" in
        "step "*/*)
            n=${line#step }; n=${n%%/*}; n=${n// /}
            total=${line#*/}; total=${total%% *}
            [[ "$n" =~ ^[0-9]+$ && "$total" =~ ^[0-9]+$ ]] || continue
            if [ "$n" -eq 1 ] || [ $(( n % ((total + 9) / 10) )) -eq 0 ]; then echo "    $line"; fi ;;
        "eval "* | "run dir "* | "done:"* | "resumed "* | "signal "* | *error* | *rror:*) echo "    $line" ;;
        esac
    done
}

# The last eval line's field (log lines are cJSON's compact output: "key":value).
last_eval() { grep '"type":"eval"' "$1" 2>/dev/null | tail -n 1 | grep -o "\"$2\":[^,}]*" | cut -d: -f2; }
last_step() { grep '"type":"step"' "$1" 2>/dev/null | tail -n 1 | grep -o '"step":[0-9]*' | cut -d: -f2; }

summary=() failed=()
for i in "${!files[@]}"; do
    name=${names[$i]} dir=$work/${names[$i]} dest=$out/${names[$i]}
    echo "[$((i + 1))/${#files[@]}] $name: ${files[$i]} ($(date +%H:%M:%S))"
    how=$(plan_run "$dir")
    if [ "$how" != fresh ] && [ "$how" != resume ]; then
        echo "    cannot start: $how"
        summary+=("| $name | not started: $how | - | - | - |"); failed+=("$name"); continue
    fi
    run_cmd "${files[$i]}" "$dir" "$how"
    mkdir -p "$dest"
    start=$(date +%s)
    timeout --kill-after=30 "$limit" "${cmd[@]}" 2>&1 | tee "$dest/train.out" | progress
    rc=${PIPESTATUS[0]}
    secs=$(( $(date +%s) - start ))
    for f in log.jsonl config.json; do [ -f "$dir/$f" ] && cp "$dir/$f" "$dest/"; done
    shard_list > "$dest/data.txt"
    case $rc in
    0) status=ok
       [ $keep -eq 1 ] || rm -f "$dir"/ckpt_*.bin ;;
    124 | 137) status="timed out after ${limit}s (continue with --resume while $dir exists)" ;;
    *) status="failed (exit $rc; see $dest/train.out)" ;;
    esac
    [ $rc -eq 0 ] || failed+=("$name")
    steps=$(last_step "$dest/log.jsonl"); ppl=$(last_eval "$dest/log.jsonl" val_ppl)
    [ -n "$ppl" ] && ppl=$(printf '%.2f' "$ppl")
    echo "    $name: $status, ${secs}s, last step ${steps:--}, last val ppl ${ppl:--}"
    summary+=("| $name | $status | ${steps:--} | ${ppl:--} | $(awk -v s="$secs" 'BEGIN { printf "%.1f", s / 60 }') |")
done

if [ $pack -eq 1 ]; then
    made=()
    for n in "${names[@]}"; do [ -d "$out/$n" ] && made+=("$n"); done
    if [ ${#made[@]} -gt 0 ]; then
        if (cd "$out" && tar czf paper_runs.tgz "${made[@]}" && rm -rf "${made[@]}"); then
            echo "packed ${made[*]} into $out/paper_runs.tgz (tar xzf it, then scripts/compare_logs)"
        else
            echo "run_paper: packing $out/paper_runs.tgz failed: the run folders are left as they are" >&2
        fi
    fi
fi
echo
echo "| run | status | last step | last val ppl | minutes |"
echo "|---|---|---|---|---|"
for s in "${summary[@]}"; do echo "$s"; done
if [ ${#failed[@]} -gt 0 ]; then
    echo "run_paper: ${#failed[@]} of ${#files[@]} run(s) did not finish: ${failed[*]}"
    exit 1
fi
echo "run_paper: all ${#files[@]} run(s) finished"
