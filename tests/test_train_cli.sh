#!/usr/bin/env bash
# End-to-end tests of ./train on the CPU: resume exactness (after SIGTERM, SIGINT and SIGKILL),
# bad input (clear message, exit 2, nothing overwritten), NaN stop. Uses small synthetic shards
# (llm.c layout) written by tests/make_shards.py, so it needs no download.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh

W=$(mktemp -d /tmp/test_train_cli.XXXXXX)
trap 'rm -rf "$W"' EXIT
export OMP_NUM_THREADS=2
python3 tests/make_shards.py "$W/data" 1000 >/dev/null || { echo "cannot write shards"; echo "0 passed, 1 failed"; exit 1; }

cat > "$W/cfg.json" <<EOF
{"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "seq_len": 32, "vocab_size": 1000, "padded_vocab": 1024},
 "attention": {"mode": "hash_sparse", "n_buckets": 4, "shared_qk": true, "exclude_self": true},
 "data": {"train": "$W/data/train_*.bin", "val": "$W/data/val_*.bin"},
 "optim": {"lr": 3e-3, "warmup_steps": 3},
 "train": {"micro_batch": 2, "total_batch_tokens": 128, "max_steps": 30, "eval_every": 7,
           "eval_tokens": 256, "ckpt_every": 5, "keep_ckpts": 2, "seed": 7}}
EOF

# Strips wall-clock fields: everything else in the log must be bit-identical.
strip_log() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    o = json.loads(line)
    for k in ("tokens_per_s", "ms", "elapsed_s"): o.pop(k, None)
    print(json.dumps(o, sort_keys=True))' "$1"; }

./train --config "$W/cfg.json" --out "$W/straight" > "$W/straight.out" 2>&1; rc=$?
check '[ $rc -eq 0 ] && [ -f "$W/straight/ckpt_00000030.bin" ]' "straight run finishes with a final checkpoint"

# Starts a run into $1 in the background (its pid in $pid) and waits until $2 steps are logged.
start_run() {
    ./train --config "$W/cfg.json" --out "$1" > "$1.out" 2>&1 &
    pid=$!
    for _ in $(seq 1 400); do
        n=$(cat "$1/log.jsonl" 2>/dev/null | grep -c '"type":"step"')
        [ "$n" -ge "$2" ] && break; sleep 0.02
    done
}
# Resumes the run in $1 to the end; its final checkpoint and log must equal the straight run's.
check_resumed() { # $1 = run dir, $2 = what interrupted it (locals: check evals its test here)
    local run=$1 what=$2
    ./train --resume "$run" > "$run.resume.out" 2>&1; rc=$?
    check '[ $rc -eq 0 ]' "resume after $what runs to the end"
    check 'cmp -s "$W/straight/ckpt_00000030.bin" "$run/ckpt_00000030.bin"' "final checkpoint bit-identical after $what resume"
    check 'diff <(strip_log "$W/straight/log.jsonl") <(strip_log "$run/log.jsonl") >/dev/null' "log identical after $what resume"
}

# Resume after SIGTERM and after SIGINT: the signal handler writes a checkpoint at the current
# step and exits 128 + the signal.
for sig in TERM:143 INT:130; do
    name=${sig%%:*} code=${sig#*:} dir="$W/sig$name"
    start_run "$dir" 8
    kill -$name $pid; wait $pid; rc=$?
    check '[ $rc -eq $code ]' "SIG$name exits $code (got $rc)"
    check 'grep -q "checkpoint at step" "$dir.out"' "SIG$name message names the checkpoint"
    check_resumed "$dir" "SIG$name"
done

# Resume after SIGKILL: steps logged after the last checkpoint are dropped and redone.
start_run "$W/kill" 12
kill -KILL $pid; wait $pid 2>/dev/null
check_resumed "$W/kill" SIGKILL
check '[ $(ls "$W/kill"/ckpt_*.bin | wc -l) -eq 2 ]' "only keep_ckpts=2 checkpoints kept"

# Bad input: exit status 2, a message naming the key or file, nothing written.
expect_usage() { # $1 = description, $2 = expected substring, rest = command
    local desc=$1 want=$2; shift 2
    local out; out=$("$@" 2>&1); local rc=$?
    if [ $rc -eq 2 ] && grep -qF -- "$want" <<<"$out"; then ok; else bad "$desc: rc=$rc out=$out"; fi
}
expect_usage "missing config" "nope.json" ./train --config "$W/nope.json" --out "$W/x1"
expect_usage "unknown --set key" "train.max_step" ./train --config "$W/cfg.json" --set train.max_step=3 --out "$W/x2"
expect_usage "bad --set value" "optim.lr" ./train --config "$W/cfg.json" --set optim.lr=-1 --out "$W/x3"
expect_usage "no train shards" "data.train" ./train --config "$W/cfg.json" --set "data.train=$W/none_*.bin" --out "$W/x4"
expect_usage "bf16 on cpu" "train.dtype" ./train --config "$W/cfg.json" --set train.dtype=bf16 --out "$W/x5"
expect_usage "unknown option" "--frobnicate" ./train --config "$W/cfg.json" --frobnicate 1
expect_usage "fp32 on cuda" "train.dtype" ./train --config "$W/cfg.json" --device cuda --out "$W/x6"
expect_usage "hash_center without hash_sparse" "attention.hash_center applies to attention.mode hash_sparse" \
    ./train --config "$W/cfg.json" --set attention.mode=qk_sparse --set attention.hash_center=true --out "$W/x8"
if [ -z "$(command -v nvidia-smi)" ]; then
    expect_usage "cuda without a GPU" "no usable CUDA device" ./train --config "$W/cfg.json" --device cuda --set train.dtype=bf16 --set attention.mode=dense --set model.n_head=1 --set model.n_embd=64 --out "$W/x7"
fi
check '[ ! -e "$W/x1" ] && [ ! -e "$W/x2" ] && [ ! -e "$W/x3" ] && [ ! -e "$W/x4" ] && [ ! -e "$W/x5" ] && [ ! -e "$W/x8" ]' "failed starts create no run dir"

before=$(cd "$W/straight" && md5sum * | md5sum)
expect_usage "out dir holds a run" "already holds a run" ./train --config "$W/cfg.json" --out "$W/straight"
mkdir -p "$W/nockpt" && cp "$W/straight/config.json" "$W/nockpt/"
expect_usage "resume without checkpoint" "no checkpoint" ./train --resume "$W/nockpt"
mkdir -p "$W/corrupt" && cp "$W/straight/config.json" "$W/straight/log.jsonl" "$W/corrupt/"
head -c 5000 "$W/straight/ckpt_00000030.bin" > "$W/corrupt/ckpt_00000030.bin"
cbefore=$(cd "$W/corrupt" && md5sum * | md5sum)
expect_usage "truncated checkpoint" "truncated" ./train --resume "$W/corrupt"
cp "$W/straight/ckpt_00000030.bin" "$W/corrupt/ckpt_00000030.bin"
printf '\x01' | dd of="$W/corrupt/ckpt_00000030.bin" bs=1 seek=3000 conv=notrunc 2>/dev/null
cbefore2=$(cd "$W/corrupt" && md5sum * | md5sum)
expect_usage "corrupt checkpoint" "corrupt" ./train --resume "$W/corrupt"
check '[ "$before" = "$(cd "$W/straight" && md5sum * | md5sum)" ]' "refused start leaves the existing run untouched"
check '[ "$cbefore2" = "$(cd "$W/corrupt" && md5sum * | md5sum)" ] && [ -n "$cbefore" ]' "refused resume leaves files untouched"

# A run whose loss turns non-finite stops naming the step: resume from a checkpoint whose
# parameters were overwritten with NaN (CRC recomputed, so the file itself is valid).
mkdir -p "$W/nan" && cp "$W/straight/config.json" "$W/straight/log.jsonl" "$W/nan/"
python3 - "$W/straight/ckpt_00000025.bin" "$W/nan/ckpt_00000025.bin" <<'PY'
import struct, sys, zlib
raw = bytearray(open(sys.argv[1], "rb").read())
n_params, = struct.unpack_from("<Q", raw, 32); clen, = struct.unpack_from("<Q", raw, 112)
raw[120 + clen:120 + clen + 4 * n_params] = b"\xff" * (4 * n_params)
struct.pack_into("<Q", raw, len(raw) - 16, zlib.crc32(bytes(raw[:-16])))
open(sys.argv[2], "wb").write(raw)
PY
out=$(./train --resume "$W/nan" 2>&1); rc=$?
check '[ $rc -eq 1 ] && grep -q "at step 26" <<<"$out"' "non-finite loss stops the run naming the step (rc=$rc)"

summary
