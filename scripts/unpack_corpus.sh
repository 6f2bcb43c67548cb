#!/usr/bin/env bash
# Unpacks one part made by scripts/pack_corpus.sh into data/shards/ (or DEST), checking every
# shard's sha256 and token count against the part's MANIFEST. Shards already there and intact
# are kept, so unpacking the parts one command at a time accumulates the whole corpus.
# Usage: scripts/unpack_corpus.sh carry/PREFIX_partK [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: scripts/unpack_corpus.sh carry/PREFIX_partK [DEST]}
dest=${2:-data/shards}
[ -f "$part/MANIFEST" ] || { echo "error: $part/MANIFEST not found: not a packed corpus part" >&2; exit 2; }
command -v xz > /dev/null || { echo "error: xz is needed (apt-get install xz-utils)" >&2; exit 2; }
mkdir -p "$dest"
total=0
while read -r sum tokens name; do
    out="$dest/$name"
    if [ ! -f "$out" ] || [ "$(sha256sum "$out" | cut -d' ' -f1)" != "$sum" ]; then
        xz -d -c "$part/$name.xz" > "$out.tmp" || { echo "error: $part/$name.xz is corrupt" >&2; exit 1; }
        [ "$(sha256sum "$out.tmp" | cut -d' ' -f1)" = "$sum" ] || { echo "error: $name: sha256 differs from $part/MANIFEST" >&2; rm -f "$out.tmp"; exit 1; }
        mv "$out.tmp" "$out"
    fi
    total=$((total + tokens))
done < "$part/MANIFEST"
echo "$part: $(wc -l < "$part/MANIFEST") shards, $total tokens in $dest/"
