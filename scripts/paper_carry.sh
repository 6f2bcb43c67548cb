#!/usr/bin/env bash
# Prepares here what scripts/run_paper.sh needs on the GPU machine, which has no network and
# receives at most 64 MiB: the trainer (built for sm_90a) with its shared libraries in
# carry/paper/trainer.tar.xz, and the corpus (scripts/get_corpus.sh, then scripts/pack_corpus.sh) in
# carry/corpus_part1/ (45 MiB for the 114 M-token corpus). Then, with the device tool
# (carry = ["carry/paper", "carry/corpus_part1"]):
#   tar xJf carry/paper/trainer.tar.xz -C carry/paper
#   export LD_LIBRARY_PATH=$PWD/carry/paper/lib:/usr/local/cuda/lib64
#   bash scripts/run_paper.sh --unpack carry/corpus_part1 --train carry/paper/train --out $OUT \
#        --tar --timeout 300 scaled/8k_dense scaled/8k_hash16 ...
# or, with GPU tests first and each run packed on its own, scripts/paper_device.sh.
#   bash scripts/paper_carry.sh [TEST ...]
# TEST: GPU test programs (tests/gpu/TEST.cu) to send along, xz-packed into
# carry/paper/gpu_tests.tar.xz (~0.3 MiB each instead of 8): the corpus leaves ~6 MiB of the 64.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory train
rm -rf carry/paper && mkdir -p carry/paper
cp train carry/paper/train
bash scripts/carry_libs.sh carry/paper/lib carry/paper/train
if [ $# -gt 0 ]; then
    for t in "$@"; do make --no-print-directory "build/tests/gpu/$t"; done
    tar cJf carry/paper/gpu_tests.tar.xz -C build/tests/gpu "$@"
fi
if ! compgen -G "data/shards/corpus_train_*.bin" > /dev/null; then bash scripts/get_corpus.sh; fi
bash scripts/pack_corpus.sh corpus
# The trainer (15 MiB, mostly kernels) and its libraries travel xz-packed (~3.5 MiB): with the
# 46 MiB corpus they would not fit the 64. scripts/paper_device.sh unpacks them (or, by hand:
# tar xJf carry/paper/trainer.tar.xz -C carry/paper).
tar cJf carry/paper/trainer.tar.xz -C carry/paper train lib
rm -rf carry/paper/train carry/paper/lib
[ ! -d carry/corpus_part2 ] || echo "note: the corpus needs several parts; run_paper.sh --unpack each (one per command fits)" >&2
du -sh carry/paper carry/corpus_part1
