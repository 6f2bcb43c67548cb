#!/usr/bin/env bash
# Builds libscfa (attention/api.h: the sparse attention kernels behind a C ABI) here, without a
# GPU, and puts it into the git-ignored carry/scfa/ for the device machine, where
#   python3 bench/scfa.py --lib carry/scfa/libscfa.so --quick --out $OUT/scfa.json
# checks it against PyTorch and times it beside cuDNN SDPA and FlexAttention. The library
# links the CUDA runtime statically and needs only libc, libm, libstdc++ and libgcc_s there.
set -euo pipefail
cd "$(dirname "$0")/.."
make libscfa
mkdir -p carry/scfa
cp build/libscfa.so carry/scfa/libscfa.so
ls -la carry/scfa
