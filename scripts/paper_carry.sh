#!/usr/bin/env bash
# Prepares here what scripts/run_paper.sh needs on the GPU machine, which has no network and
# receives at most 64 MiB: the trainer (built for sm_90a) with its shared libraries in
# carry/paper/, and the corpus (scripts/get_corpus.sh, then scripts/pack_corpus.sh) in
# carry/corpus_part1/ (45 MiB for the 114 M-token corpus). Then, with the device tool
# (carry = ["carry/paper", "carry/corpus_part1"]):
#   export LD_LIBRARY_PATH=$PWD/carry/paper/lib:/usr/local/cuda/lib64
#   bash scripts/run_paper.sh --unpack carry/corpus_part1 --train carry/paper/train --out $OUT \
#        --tar --timeout 300 scaled/8k_dense scaled/8k_hash16 ...
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory train
rm -rf carry/paper && mkdir -p carry/paper
cp train carry/paper/train
bash scripts/carry_libs.sh carry/paper/lib carry/paper/train
if ! compgen -G "data/shards/corpus_train_*.bin" > /dev/null; then bash scripts/get_corpus.sh; fi
bash scripts/pack_corpus.sh corpus
[ ! -d carry/corpus_part2 ] || echo "note: the corpus needs several parts; run_paper.sh --unpack each (one per command fits)" >&2
du -sh carry/paper carry/corpus_part1
