#!/usr/bin/env bash
# Tokenizer throughput, ours vs the reference JavaScript encoder (npm gpt-3-encoder), on the
# same text. Ours: one thread and THREADS threads (default: all cores), fresh merge caches each
# run, best of 3. Reference: the text fed in pieces of ~300 characters cut where GPT-2's pattern
# cuts anyway (fed whole it is quadratic in the input length), one run.
# Usage: bench/tokenizer/run.sh [TEXT] [THREADS]
#   TEXT defaults to the exactness test's varied text set (generated if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
text=${1:-build/tokenizer_test/text.txt}
threads=${2:-$(nproc)}
bash scripts/get_tokenizer.sh
module=build/npm/node_modules/gpt-3-encoder
if ! grep -q '"version": "1.1.4"' "$module/package.json" 2> /dev/null; then
    npm install --silent --no-audit --no-fund --prefix build/npm gpt-3-encoder@1.1.4 2>&1 | grep -v 'Unknown user config' || true
fi
mkdir -p build/tokenizer_test
[ -f "$text" ] || node tests/tokenizer/make_text.js "$text"
make -s build/libcore.a
gcc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -I. bench/tokenizer/bench_tokenizer.c build/libcore.a \
    -o build/tokenizer_test/bench_tokenizer -lcjson -lpcre2-8 -lm -lpthread
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1 /proc/loadavg)"
build/tokenizer_test/bench_tokenizer tokenizer/encoder.json tokenizer/vocab.bpe "$text" "$threads" 3
node tests/tokenizer/ref_encode.js "$PWD/$module" "$text" build/tokenizer_test/bench_ref_ids.bin 300
