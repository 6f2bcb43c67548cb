#!/usr/bin/env bash
# Data-parallel training on the CPU through MPI (ZeRO-1): 2 ranks equal 1 rank with twice the
# gradient accumulation (within fp32 reduction-order tolerance), a checkpoint written by 2 ranks
# resumes on 1 rank (and one of 1 rank on 2), mismatched launches are refused, and a killed rank
# ends the whole run with a message instead of a hang.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh

if ! command -v mpirun >/dev/null; then echo "mpirun not found (apt-get install openmpi-bin)"; echo "0 passed, 1 failed"; exit 1; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN="mpirun --oversubscribe --bind-to none -np"
W=$(mktemp -d /tmp/test_dist.XXXXXX)
trap 'rm -rf "$W"' EXIT
python3 tests/make_shards.py "$W/data" 1000 >/dev/null

cat > "$W/cfg.json" <<EOF
{"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "seq_len": 32, "vocab_size": 1000, "padded_vocab": 1024},
 "attention": {"mode": "qk_sparse", "drop_prob": 0.3, "shared_qk": true},
 "data": {"train": "$W/data/train_*.bin", "val": "$W/data/val_*.bin"},
 "optim": {"lr": 3e-3, "warmup_steps": 2},
 "train": {"micro_batch": 2, "total_batch_tokens": 256, "max_steps": 8, "eval_every": 4,
           "eval_tokens": 256, "ckpt_every": 4, "keep_ckpts": 3, "seed": 11}}
EOF

# Logs and checkpoints are compared by tests/compare_runs.py (shared with the GPU tests).
compare_logs() { python3 tests/compare_runs.py logs "$@"; }
compare_ckpt() { python3 tests/compare_runs.py ckpt "$@"; }

./train --config "$W/cfg.json" --out "$W/one" > "$W/one.out" 2>&1; rc=$?
check '[ $rc -eq 0 ]' "1-rank run (rc=$rc): $(tail -3 "$W/one.out")"
$MPIRUN 2 ./train --config "$W/cfg.json" --out "$W/two" > "$W/two.out" 2>&1; rc=$?
check '[ $rc -eq 0 ]' "2-rank run (rc=$rc): $(tail -5 "$W/two.out")"
check 'grep -q "data parallel: 2 ranks" "$W/two.out"' "2-rank run reports its ranks"
check 'compare_logs "$W/one/log.jsonl" "$W/two/log.jsonl" 1e-4' "2 ranks give the losses of 1 rank with twice the accumulation"
check 'compare_ckpt "$W/one/ckpt_00000008.bin" "$W/two/ckpt_00000008.bin" 1e-4' "2 ranks give the weights of 1 rank"
check '[ $(grep -c "\"type\":\"header\"" "$W/two/log.jsonl") -eq 1 ]' "only rank 0 writes the log"

# Resume across world sizes: stop both after step 4 by resuming from their step-4 checkpoints.
for src in one two; do
    mkdir -p "$W/${src}_r" && cp "$W/$src/config.json" "$W/$src/log.jsonl" "$W/$src/ckpt_00000004.bin" "$W/${src}_r/"
done
$MPIRUN 2 ./train --resume "$W/one_r" > "$W/one_r.out" 2>&1; rc=$?
check '[ $rc -eq 0 ]' "1-rank checkpoint resumes on 2 ranks (rc=$rc): $(tail -3 "$W/one_r.out")"
./train --resume "$W/two_r" > "$W/two_r.out" 2>&1; rc=$?
check '[ $rc -eq 0 ]' "2-rank checkpoint resumes on 1 rank (rc=$rc): $(tail -3 "$W/two_r.out")"
check 'compare_ckpt "$W/one/ckpt_00000008.bin" "$W/one_r/ckpt_00000008.bin" 1e-4' "1->2 rank resume reaches the same weights"
check 'compare_ckpt "$W/one/ckpt_00000008.bin" "$W/two_r/ckpt_00000008.bin" 1e-4' "2->1 rank resume reaches the same weights"

# Mismatched launch: ranks given different configs are refused.
out=$($MPIRUN 1 ./train --config "$W/cfg.json" --out "$W/mm" --set train.seed=1 : -np 1 ./train --config "$W/cfg.json" --out "$W/mm" --set train.seed=2 2>&1); rc=$?
check '[ $rc -ne 0 ] && grep -q "differs between rank 0 and rank 1" <<<"$out"' "mismatched configs refused (rc=$rc)"

# A killed rank ends every rank, with a message, in bounded time.
sed 's/"max_steps": 8/"max_steps": 100000/' "$W/cfg.json" > "$W/long.json"
start=$(date +%s)
$MPIRUN 2 ./train --config "$W/long.json" --out "$W/kill" > "$W/kill.out" 2>&1 &
mpipid=$!
for _ in $(seq 1 300); do
    [ "$(cat "$W/kill/log.jsonl" 2>/dev/null | grep -c '"type":"step"')" -ge 3 ] && break; sleep 0.1
done
victim=$(pgrep -f "train --config $W/long.json" | tail -n 1)
kill -KILL "$victim" 2>/dev/null
timeout 60 tail --pid=$mpipid -f /dev/null; trc=$?
wait $mpipid 2>/dev/null; rc=$?
elapsed=$(( $(date +%s) - start ))
pkill -KILL -f "train --config $W/long.json" 2>/dev/null
check '[ $trc -eq 0 ] && [ $rc -ne 0 ]' "killed rank ends the run (rc=$rc, ${elapsed}s)"
check 'grep -qiE "killed|signal|exited|abort" "$W/kill.out"' "killed rank: a message says what happened"

summary
