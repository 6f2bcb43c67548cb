#!/usr/bin/env bash
# Tests of the paper-run tooling, CPU only:
# - scripts/compare_logs on synthetic run folders with known curves (table numbers, notes,
#   errors, PNGs);
# - every configs/paper config is accepted by the trainer's strict config reader, and the
#   configs hold what docs/RESULTS.md says (paper settings, scaled runs of one length equal
#   except for attention);
# - scripts/run_paper.sh: --dry, a real tiny CPU pipeline through ./train (collection, a failing
#   run that does not stop the next, the summary), a timed-out run, then compare_logs on it.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh

W=$(mktemp -d /tmp/test_compare_logs.XXXXXX)
trap 'rm -rf "$W"' EXIT
export OMP_NUM_THREADS=2

# ---- synthetic runs: RUN_DIR SEQ MODE PARAM MAX_STEPS MS "step:elapsed:ppl ..." [LAST_STEP]
make_run() {
    python3 - "$@" <<'EOF'
import json, os, sys
d, seq, mode, param, max_steps, ms, evals = sys.argv[1:8]
last = int(sys.argv[8]) if len(sys.argv) > 8 else int(max_steps)
seq, max_steps, ms = int(seq), int(max_steps), float(ms)
att = {"mode": mode, "n_buckets": 1, "drop_prob": 0.0, "shared_qk": mode != "dense",
       "exclude_self": mode == "hash_sparse", "dense_layers": []}
if mode == "hash_sparse": att["n_buckets"] = int(param)
if mode == "qk_sparse": att["drop_prob"] = float(param)
cfg = {"model": {"seq_len": seq}, "attention": att, "optim": {"lr": 0.001, "warmup_steps": 2},
       "train": {"max_steps": max_steps, "total_batch_tokens": 4 * seq}}
os.makedirs(d)
json.dump(cfg, open(f"{d}/config.json", "w"))
ev = {int(s): (float(t), float(p)) for s, t, p in (e.split(":") for e in evals.split())}
with open(f"{d}/log.jsonl", "w") as f:
    f.write(json.dumps({"type": "header", "config": cfg}) + "\n")
    for s in range(1, last + 1):
        # step times alternate ms-10, ms+10 around ms with one slow first step: median = ms
        m = ms * 5 if s == 1 else ms + (10 if s % 2 else -10)
        f.write(json.dumps({"type": "step", "step": s, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0,
                            "tokens": s * 4 * seq, "tokens_per_s": round(4 * seq / m * 1000),
                            "ms": m, "elapsed_s": s * ms / 1000,
                            **({} if mode == "dense" else {"attn_live": 0.9 if s <= 0.9 * last else 0.25})}) + "\n")
        if s in ev:
            t, p = ev[s]
            f.write(json.dumps({"type": "eval", "step": s, "val_loss": 1.0, "val_ppl": p,
                                "elapsed_s": t}) + "\n")
EOF
}
R=$W/runs
# dense: 22 first reached at its last eval, t = 40 s
make_run "$R/dense" 8192 dense 0 40 1000 "10:10:40 20:20:30 30:30:25 40:40:22"
# same curve over steps, half the wall time: 2.00x both ways
make_run "$R/hash16" 8192 hash_sparse 16 40 500 "10:5:40 20:10:30 30:15:25 40:20:22"
# crosses 22 between (10 s, 26) and (15 s, 21): t = 10 + 4/5 * 5 = 14 s -> 40/14 = 2.86x
make_run "$R/qk50" 8192 qk_sparse 0.5 40 1000 "10:5:35 20:10:26 30:15:21 40:20:20"
# never reaches 22, stopped at step 30 of 40
make_run "$R/qk70" 8192 qk_sparse 0.7 40 800 "10:8:50 20:16:40 30:24:32" 30
# another seq length without a dense run
make_run "$R/hash8_16k" 16384 hash_sparse 8 40 900 "20:18:60 40:36:50"

out=$(scripts/compare_logs --out-dir "$W/cmp" "$R/dense" "$R/hash16" "$R/qk50" "$R/qk70" "$R/hash8_16k" 2> "$W/err"); rc=$?
check '[ $rc -eq 0 ]' "compare_logs on good runs exits 0 (got $rc: $(cat "$W/err"))"
# cell N (1-based, after the leading '|') of the table row of run NAME
cell() { echo "$out" | grep "^| $1 " | head -n 1 | awk -F'|' -v n="$2" '{ gsub(/^ +| +$/, "", $(n + 1)); print $(n + 1) }'; }
# columns: 1 run, 2 attention, 3 steps, 4 final ppl, 5 ppl vs dense, 6 tok/s, 7 ms, 8 attn live,
# 9 time, 10 speed-up, 11 step speed-up
check '[ "$(cell hash16 10)" = 2.00x ]' "hash16 equal-perplexity speed-up 2.00x (got '$(cell hash16 10)')"
check '[ "$(cell hash16 11)" = 2.00x ]' "hash16 step-time speed-up 2.00x (got '$(cell hash16 11)')"
check '[ "$(cell hash16 9)" = "20.0 s" ]' "hash16 reaches dense ppl at 20.0 s (got '$(cell hash16 9)')"
check '[ "$(cell hash16 7)" = 500.0 ]' "hash16 median ms/step 500.0 (got '$(cell hash16 7)')"
# tokens/s per step: one slow first step, 19 at 510 ms (64,251), 20 at 490 ms (66,873): the
# median of 40 is the mean of the middle two, (64,251 + 66,873) / 2
check '[ "$(cell hash16 6)" = 65,562 ]' "hash16 median tokens/s 65,562 (got '$(cell hash16 6)')"
check '[ "$(cell hash16 2)" = "hash nb=16 (shared_qk, exclude_self)" ]' "hash16 attention column (got '$(cell hash16 2)')"
check '[ "$(cell qk50 9)" = "14.0 s" ]' "qk50 interpolated time 14.0 s (got '$(cell qk50 9)')"
check '[ "$(cell qk50 10)" = 2.86x ]' "qk50 speed-up 40/14 = 2.86x (got '$(cell qk50 10)')"
check '[ "$(cell qk50 11)" = 1.00x ]' "qk50 step-time speed-up 1.00x (got '$(cell qk50 11)')"
check '[ "$(cell qk50 5)" = "-9.09%" ]' "qk50 ppl vs dense -9.09% (got '$(cell qk50 5)')"
check '[ "$(cell qk70 9)" = "not reached" ]' "qk70 never reaches dense ppl (got '$(cell qk70 9)')"
check '[ "$(cell qk70 10)" = - ]' "qk70 has no equal-perplexity speed-up (got '$(cell qk70 10)')"
check '[ "$(cell qk70 11)" = 1.25x ]' "qk70 step-time speed-up 1000/800 = 1.25x (got '$(cell qk70 11)')"
check '[ "$(cell qk70 3)" = 30/40 ]' "qk70 steps column 30/40 (got '$(cell qk70 3)')"
check 'echo "$out" | grep -q "note: qk70 stopped at step 30 of 40"' "note on the unfinished run"
check '[ "$(cell "dense (dense baseline)" 4)" = 22.00 ]' "dense final ppl 22.00 (got '$(cell "dense (dense baseline)" 4)')"
check '[ "$(cell "dense (dense baseline)" 10)" = 1.00x ]' "dense speed-up over itself 1.00x"
check '[ "$(cell "dense (dense baseline)" 8)" = - ]' "no attn live column for a dense run"
check '[ "$(cell hash16 8)" = 0.250 ]' "hash16 attn live: mean of the last 10% of steps (got '$(cell hash16 8)')"
check 'echo "$out" | grep -q "note: no dense run at seq 16384"' "note for the group without dense"
check '[ "$(cell hash8_16k 10)" = - ] && [ "$(cell hash8_16k 11)" = - ] && [ "$(cell hash8_16k 4)" = 50.00 ]' \
      "no speed-up values without dense, final ppl still shown"
check '[ "$(echo "$out" | grep -c "^### seq")" -eq 2 ]' "one table per seq length"
cp -r "$R/hash16" "$W/hash16_gz" && gzip "$W/hash16_gz/log.jsonl"
gz=$(scripts/compare_logs --no-plots "$R/dense" "$W/hash16_gz" 2>&1)
check 'echo "$gz" | grep "^| hash16_gz " | grep -q "| 2.00x | 2.00x |"' "a gzipped log.jsonl.gz reads as the plain log"

for s in 8192 16384; do
    check '[ "$(head -c 8 "$W/cmp/val_ppl_seq$s.png" | od -An -tx1 | tr -d " \n")" = 89504e470d0a1a0a ]' "PNG written for seq $s"
done
check '[ -s "$W/cmp/summary.md" ]' "summary.md written"

# --ppl-levels: dense reaches 40 at its first eval (10 s) and 30 at 20 s. hash16: half the time.
# qk50: 35 at 5 s <= 40 -> 5 s (2.00x); crosses 30 between (5 s, 35) and (10 s, 26): t = 5 + 5/9 * 5
# = 7.78 s -> 20 / 7.78 = 2.57x. qk70: 40 at 16 s (0.62x), never 30. No run reaches 21.5.
lv=$(scripts/compare_logs --no-plots --ppl-levels 40,30,21.5 "$R/dense" "$R/hash16" "$R/qk50" "$R/qk70" 2>&1); rc=$?
lvrow() { echo "$lv" | grep "^| $1 " | tail -n 1; }
check '[ $rc -eq 0 ] && [ "$(lvrow "dense (seconds)")" = "| dense (seconds) | 10.0 s | 20.0 s | - |" ]' \
    "levels table: dense's times (got '$(lvrow "dense (seconds)")', rc $rc)"
check '[ "$(lvrow hash16)" = "| hash16 | 2.00x | 2.00x | - |" ]' "levels table: hash16 2.00x at every level (got '$(lvrow hash16)')"
check '[ "$(lvrow qk50)" = "| qk50 | 2.00x | 2.57x | - |" ]' "levels table: qk50 interpolated (got '$(lvrow qk50)')"
check '[ "$(lvrow qk70)" = "| qk70 | 0.62x | - | - |" ]' "levels table: qk70 reaches 40 at 16 s (10/16), never 30 (got '$(lvrow qk70)')"
scripts/compare_logs --no-plots --ppl-levels 30,-2 "$R/dense" > /dev/null 2> "$W/err"; rc=$?
check '[ $rc -eq 2 ] && grep -q "ppl-levels.*positive" "$W/err"' "--ppl-levels with a negative level -> exit 2 (got $rc)"
scripts/compare_logs --no-plots --ppl-levels 30,abc "$R/dense" > /dev/null 2> "$W/err"; rc=$?
check '[ $rc -eq 2 ] && grep -q "ppl-levels.*not a comma-separated list" "$W/err"' "--ppl-levels with a word -> exit 2 (got $rc)"

# ---- errors: exit 2 and a message naming the file / line
expect_error() { # MESSAGE_PART ARGS...
    local want=$1; shift
    scripts/compare_logs --no-plots "$@" > /dev/null 2> "$W/err"; local rc=$?
    check '[ $rc -eq 2 ] && grep -qF -- "$want" "$W/err"' "compare_logs $* -> exit 2 with '$want' (got $rc: $(cat "$W/err"))"
}
expect_error "$W/nope: no such run folder" "$R/dense" "$W/nope"
mkdir "$W/nolog"; cp "$R/dense/config.json" "$W/nolog/"
expect_error "$W/nolog/log.jsonl: not found" "$W/nolog"
mkdir "$W/nocfg"; cp "$R/dense/log.jsonl" "$W/nocfg/"
expect_error "$W/nocfg/config.json: not found" "$W/nocfg"
cp -r "$R/dense" "$W/garbled"; sed -i '3s/.*/{"type": "step", "step": 2,/' "$W/garbled/log.jsonl"
expect_error "$W/garbled/log.jsonl line 3: not a JSON object" "$W/garbled"
cp -r "$R/dense" "$W/noppl"; python3 - "$W/noppl/log.jsonl" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
for o in lines:
    if o["type"] == "eval": o.pop("val_ppl"); break
open(sys.argv[1], "w").write("".join(json.dumps(o) + "\n" for o in lines))
EOF
expect_error 'eval line needs a finite number "val_ppl"' "$W/noppl"
cp -r "$R/dense" "$W/dense2"
expect_error "several baseline candidates" "$R/dense" "$W/dense2"
out=$(scripts/compare_logs --no-plots --baseline dense2 "$R/dense" "$W/dense2" "$R/hash16" 2>&1); rc=$?
check '[ $rc -eq 0 ] && echo "$out" | grep -q "^| dense2 (dense baseline)"' "--baseline picks among several dense runs"

# ---- configs/paper: accepted by the trainer's config reader. With a data glob that matches
# nothing, ./train stops at the first data check, which comes after loading the file (unknown
# keys, types, ranges), the --set overrides, config_validate and the batch divisibility check:
# reaching that message means everything before it passed. Nothing is read or written.
if [ -x ./train ]; then
    n=0
    # extra/: controls beside the scaled runs (docs/RESULTS.md), checked but not counted
    for f in configs/paper/*.json configs/paper/scaled/*.json configs/paper/extra/*.json; do
        msg=$(./train --config "$f" --device cpu --set train.dtype=fp32 --set "data.train=$W/none_*.bin" 2>&1); rc=$?
        check '[ $rc -eq 2 ] && echo "$msg" | grep -qF "data.train = \"$W/none_*.bin\": no file matches"' \
              "$f is accepted by the trainer's config reader (got $rc: $msg)"
        case "$f" in configs/paper/extra/*) ;; *) n=$((n + 1)) ;; esac
    done
    check '[ $n -eq 28 ]' "28 paper configs (14 full + 14 scaled), found $n"
    printf '{"model": {"seq_len": 8192}, "train": {"max_stepz": 3}}' > "$W/badkey.json"
    msg=$(./train --config "$W/badkey.json" --device cpu --set train.dtype=fp32 --set "data.train=$W/none_*.bin" 2>&1)
    check 'echo "$msg" | grep -q "unknown key"' "the config check can fail: an unknown key is reported first"
else
    bad "./train is not built: cannot check configs/paper against the config reader"
fi

# What the configs must hold (docs/RESULTS.md): paper settings; scaled runs of one length equal
# in everything but attention; 2% warm-up; evaluations fitting the validation split.
msg=$(python3 - <<'EOF'
import glob, json
errors = []
def load(p): return json.load(open(p))
paper = {8192: (1048576, 15000), 16384: (1474560, 15000)}
for folder in ("configs/paper", "configs/paper/scaled"):
    by_seq = {}
    for p in sorted(glob.glob(folder + "/*.json")):
        c = load(p); m, a, o, t = c["model"], c["attention"], c["optim"], c["train"]
        by_seq.setdefault(m["seq_len"], []).append((p, c))
        if (m["n_layer"], m["n_head"], m["n_embd"], m["padded_vocab"], m["bias"]) != (12, 12, 768, 50304, False):
            errors.append(f"{p}: not GPT-2 small")
        if (o["lr"], o["schedule"], o["beta1"], o["beta2"], o["weight_decay"]) != (1e-3, "cosine", 0.9, 0.95, 0.1):
            errors.append(f"{p}: optimizer differs from the paper's")
        if o["warmup_steps"] != round(0.02 * t["max_steps"]):
            errors.append(f"{p}: warm-up {o['warmup_steps']} is not 2% of {t['max_steps']} steps")
        if t["dtype"] != "bf16" or not c["data"]["train"].startswith("data/shards/corpus_"):
            errors.append(f"{p}: dtype or corpus")
        if a["mode"] != "dense" and not a["shared_qk"]:
            errors.append(f"{p}: H-LM / D-LM share keys with queries")
        if a["mode"] == "hash_sparse" and not a["exclude_self"]:
            errors.append(f"{p}: H-LM excludes self")
        if t["eval_tokens"] > 786432:
            errors.append(f"{p}: eval_tokens beyond the validation split (854,617 tokens)")
        if folder == "configs/paper" and (t["total_batch_tokens"], t["max_steps"]) != paper[m["seq_len"]]:
            errors.append(f"{p}: batch / steps differ from the paper's")
    for seq, runs in by_seq.items():
        modes = sorted((c["attention"]["mode"], c["attention"]["n_buckets"], c["attention"]["drop_prob"]) for _, c in runs)
        if modes != [("dense", 1, 0.0), ("hash_sparse", 8, 0.0), ("hash_sparse", 16, 0.0), ("hash_sparse", 32, 0.0),
                     ("qk_sparse", 1, 0.3), ("qk_sparse", 1, 0.5), ("qk_sparse", 1, 0.7)]:
            errors.append(f"{folder} seq {seq}: variants {modes}")
        ref = {k: v for k, v in runs[0][1].items() if k != "attention"}
        for p, c in runs[1:]:
            if {k: v for k, v in c.items() if k != "attention"} != ref:
                errors.append(f"{p}: differs from {runs[0][0]} outside attention")
print("\n".join(errors) if errors else "ok")
EOF
)
check '[ "$msg" = ok ]' "configs/paper hold the paper's settings: $msg"

# ---- run_paper.sh
out=$(bash scripts/run_paper.sh --dry --out "$W/o" --train ./train scaled/8k_dense configs/paper/scaled/16k_hash16.json 2>&1); rc=$?
check '[ $rc -eq 0 ] && echo "$out" | grep -q "^\[2/2\] 16k_hash16" && echo "$out" | grep -q -- "--config .*configs/paper/scaled/8k_dense.json --out runs/paper/8k_dense"' \
      "run_paper --dry lists the runs and their commands (got $rc: $out)"
check '[ ! -e "$W/o" ]' "run_paper --dry writes nothing"
bash scripts/run_paper.sh --dry --out "$W/o" no_such_config > /dev/null 2> "$W/err"; rc=$?
check '[ $rc -eq 2 ] && grep -q "config .no_such_config. not found" "$W/err"' "run_paper: unknown config -> exit 2"

python3 tests/make_shards.py "$W/data" > /dev/null
for f in "$W"/data/*.bin; do mv "$f" "$W/data/tiny_$(basename "$f")"; done
printf '{"model": {"seq_len": 64}, "train": {"max_stepz": 3}}' > "$W/broken.json"
tiny=(--set model.n_layer=1 --set model.n_head=2 --set model.n_embd=32 --set model.seq_len=64
      --set train.micro_batch=2 --set train.total_batch_tokens=256 --set train.max_steps=4
      --set train.eval_every=2 --set train.eval_tokens=256 --set optim.warmup_steps=1 --set train.dtype=fp32)
bash scripts/run_paper.sh --out "$W/o" --work "$W/work" --data "$W/data/tiny" "${tiny[@]}" \
    "$W/broken.json" scaled/8k_dense scaled/8k_qk50 > "$W/rp.out" 2>&1; rc=$?
check '[ $rc -eq 1 ]' "run_paper exits 1 when a run failed (got $rc)"
check 'grep -q "^| broken | failed (exit 2" "$W/rp.out" && grep -q "did not finish: broken" "$W/rp.out"' "the failed run is reported"
check 'grep -q "^| 8k_dense | ok | 4 |" "$W/rp.out" && grep -q "^| 8k_qk50 | ok | 4 |" "$W/rp.out"' "the runs after the failed one finished"
check 'for r in 8k_dense 8k_qk50; do for f in log.jsonl config.json train.out data.txt; do [ -s "$W/o/$r/$f" ] || exit 1; done; done' \
      "each run's log.jsonl, config.json, train.out, data.txt collected"
check '[ -z "$(ls "$W/work/8k_dense" | grep ckpt_)" ]' "checkpoints of a finished run are removed"
check 'grep -q "unknown key" "$W/o/broken/train.out"' "the failed run's console output is kept"
out=$(scripts/compare_logs --out-dir "$W/cmp2" "$W/o/8k_dense" "$W/o/8k_qk50" 2>&1); rc=$?
check '[ $rc -eq 0 ] && echo "$out" | grep -q "^| 8k_qk50 | qk drop=0.5 (shared_qk) | 4/4 |" && [ -s "$W/cmp2/val_ppl_seq64.png" ]' \
      "compare_logs reads the trainer's real logs (got $rc: $out)"
bash scripts/run_paper.sh --out "$W/o" --work "$W/work" --data "$W/data/tiny" scaled/8k_dense > "$W/rp2.out" 2>&1; rc=$?
check '[ $rc -eq 1 ] && grep -q "already exists: pass --resume" "$W/rp2.out"' "an existing run folder is not overwritten"

printf '#!/bin/sh\nsleep 20\n' > "$W/slow_train"; chmod +x "$W/slow_train"
start=$(date +%s)
bash scripts/run_paper.sh --out "$W/o3" --work "$W/work3" --data "$W/data/tiny" --train "$W/slow_train" --timeout 1 \
    --tar scaled/16k_dense > "$W/rp3.out" 2>&1; rc=$?
check '[ $rc -eq 1 ] && grep -q "^| 16k_dense | timed out after 1s" "$W/rp3.out" && [ $(( $(date +%s) - start )) -lt 15 ]' \
      "a run past --timeout is stopped and reported (got $rc)"
check '[ -s "$W/o3/paper_runs.tgz" ] && [ ! -e "$W/o3/16k_dense" ] && tar tzf "$W/o3/paper_runs.tgz" | grep -q 16k_dense/train.out' \
      "--tar packs the run folders into one archive"
summary
