#!/usr/bin/env bash
# `make demo`: fetches the tokenizer and the CPU demo slice of the corpus (once), then trains
# configs/tiny.json on the CPU. Extra arguments go to ./train (e.g. --set train.max_steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/get_tokenizer.sh
if ! compgen -G "data/shards/demo_train_*.bin" >/dev/null || ! compgen -G "data/shards/demo_val_*.bin" >/dev/null; then
    bash scripts/get_corpus.sh --small
fi
exec ./train --config configs/tiny.json --device cpu "$@"
