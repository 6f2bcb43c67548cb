#!/usr/bin/env bash
# Step time and sparse-attention work (the step log's attn_live) of ./train in several attention
# settings, GPT-2 small at one micro-batch per step, on the demo shards. For the shared-QK
# question of docs/PERF.md: does the H-LM step cost more because of its kernels, because of a
# stall, or because its buckets stop being balanced once training starts?
# usage (GPU machine): bash bench/e2e/step_modes.sh TRAIN_BIN OUTDIR [STEPS]
set -uo pipefail
train=$1 out=$2 steps=${3:-12}
mkdir -p "$out"
common=(--device cuda --set data.train='data/shards/demo_train_*.bin' --set data.val='data/shards/demo_val_*.bin'
        --set train.total_batch_tokens=32768 --set train.micro_batch=4 --set train.max_steps="$steps"
        --set train.eval_every=0 --set train.ckpt_every=0 --set train.sample_every=0 --set optim.warmup_steps=4)
run() { # name config extra-sets...
    local name=$1 cfg=$2; shift 2
    "$train" --config "$cfg" "${common[@]}" "$@" --out "$out/$name" > "$out/$name.out" 2>&1 || echo "$name: exit $?"
    python3 - "$out/$name/log.jsonl" "$name" <<'PY'
import json, sys, statistics
steps = [json.loads(l) for l in open(sys.argv[1]) if '"type":"step"' in l]
ms = [s["ms"] for s in steps[3:]]
live = [s.get("attn_live", -1) for s in steps]
print(f"{sys.argv[2]:28s} median ms {statistics.median(ms):7.1f}  attn_live by step: " +
      " ".join(f"{x:.3f}" for x in live))
PY
}
run dense configs/gpt_8k.json
run hash16_shared configs/gpt_8k_hash.json
run hash16_sep configs/gpt_8k_hash.json --set attention.shared_qk=false
run hash16_shared_lr0 configs/gpt_8k_hash.json --set optim.lr=1e-9 --set optim.min_lr=1e-10
run qk50_shared configs/gpt_8k_qk.json
run qk50_sep configs/gpt_8k_qk.json --set attention.shared_qk=false
