#!/usr/bin/env bash
# Packs token shards for the GPU machine, which has no network and receives at most 64 MiB of
# files per command (the device tool's `carry`). Each shard is xz-compressed on its own, and the
# compressed shards are grouped into parts of at most BUDGET MiB (default 56, leaving room for
# other carried files): carry/PREFIX_part1/, carry/PREFIX_part2/, ... Validation shards go
# into part 1, so part 1 alone is a complete (smaller) data set. Each part has a MANIFEST with
# the sha256 and token count of every shard; scripts/unpack_corpus.sh checks them on arrival.
# Files already packed are not compressed again.
# Usage: scripts/pack_corpus.sh [PREFIX (default corpus)] [BUDGET_MIB (default 56)]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-corpus}
budget=$(( ${2:-56} * 1024 * 1024 ))
command -v xz > /dev/null || { echo "error: xz is needed (apt-get install xz-utils)" >&2; exit 2; }
mapfile -t shards < <(ls data/shards/"${prefix}"_val_*.bin 2> /dev/null; ls data/shards/"${prefix}"_train_*.bin 2> /dev/null)
[ ${#shards[@]} -gt 0 ] || { echo "error: no shards data/shards/${prefix}_{val,train}_*.bin" >&2; exit 2; }
stage=carry/${prefix}_xz
mkdir -p "$stage"
rm -rf carry/"${prefix}"_part*
part=1 used=0 tokens=0
for s in "${shards[@]}"; do
    name=$(basename "$s")
    if [ ! -f "$stage/$name.xz" ] || [ "$s" -nt "$stage/$name.xz" ]; then
        # 16 MiB blocks: xz compresses blocks in parallel (one 40 MB block would use one core)
        xz -9 -T0 --block-size=16MiB -c "$s" > "$stage/$name.xz.tmp" && mv "$stage/$name.xz.tmp" "$stage/$name.xz"
    fi
    size=$(stat -c %s "$stage/$name.xz")
    [ "$size" -le "$budget" ] || { echo "error: $name compresses to $size bytes, over the budget: use smaller --shard-tokens" >&2; exit 1; }
    if [ $((used + size)) -gt "$budget" ]; then
        echo "part $part: $((used / 1048576)) MiB, $tokens tokens"
        part=$((part + 1)) used=0 tokens=0
    fi
    dir=carry/${prefix}_part$part
    mkdir -p "$dir"
    ln -f "$stage/$name.xz" "$dir/$name.xz"
    n=$(od -An -t d4 -j 8 -N 4 "$s" | tr -d ' ')
    echo "$(sha256sum "$s" | cut -d' ' -f1) $n $name" >> "$dir/MANIFEST"
    used=$((used + size)) tokens=$((tokens + n))
done
echo "part $part: $((used / 1048576)) MiB, $tokens tokens"
echo "parts in carry/${prefix}_part*/; on the GPU machine: bash scripts/unpack_corpus.sh carry/${prefix}_partK"
