#!/usr/bin/env bash
# The tiny model learns real English: the license texts every Debian system ships
# (/usr/share/common-licenses, ~260 KB of prose) are tokenized with ./prepare, split by
# paragraph into documents (train / val), and a small GPT trains on them on the CPU. The
# validation loss must fall well below its starting value (ln 50257 = 10.8 at init).
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh
W=$(mktemp -d /tmp/test_real_data.XXXXXX)
trap 'rm -rf "$W"' EXIT
export OMP_NUM_THREADS=1
bash scripts/get_tokenizer.sh || { echo "cannot fetch the tokenizer"; echo "0 passed, 1 failed"; exit 1; }
# One document per blank-line-separated paragraph (record separator 0x1e between them).
cat /usr/share/common-licenses/{GPL-3,LGPL-3,Apache-2.0,GFDL-1.3,MPL-2.0,Artistic} 2>/dev/null \
    | awk 'BEGIN{RS=""; ORS="\036"} {print}' > "$W/text.txt"
./prepare encode --in "$W/text.txt" --out "$W/shards" --prefix lic --doc-sep '\x1e' --val-fraction 0.1 \
    --threads 1 > "$W/prepare.out" 2>&1 || { bad "prepare encode: $(tail -2 "$W/prepare.out")"; }
cat > "$W/cfg.json" <<CFG
{"model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 64},
 "data": {"train": "$W/shards/lic_train_*.bin", "val": "$W/shards/lic_val_*.bin"},
 "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5},
 "train": {"micro_batch": 4, "total_batch_tokens": 256, "max_steps": 60, "eval_every": 30,
           "eval_tokens": 1024, "ckpt_every": 0, "seed": 3}}
CFG
./train --config "$W/cfg.json" --device cpu --out "$W/run" > "$W/train.out" 2>&1; rc=$?
[ $rc -eq 0 ] && ok || bad "train exit $rc: $(tail -3 "$W/train.out")"
python3 - "$W/run/log.jsonl" <<'PY' && ok || bad "validation loss did not fall: $(grep eval "$W/run/log.jsonl")"
import json, sys
ev = [json.loads(l)["val_loss"] for l in open(sys.argv[1]) if '"type":"eval"' in l]
print("val loss by eval:", ", ".join(f"{v:.3f}" for v in ev))
sys.exit(0 if len(ev) == 2 and ev[-1] < 7.0 and ev[-1] < ev[0] else 1)
PY
summary
