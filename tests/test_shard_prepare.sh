#!/usr/bin/env bash
# The prepare tool end to end: text files (one with --doc-sep pieces) -> train/val shards ->
# decoded text. Every document lands whole in exactly one split, preceded by <|endoftext|>;
# runs are deterministic; standard input works; existing shards are not silently replaced;
# bad input gives exit status 2 and a message naming the file.
set -uo pipefail
cd "$(dirname "$0")/.."
pass=0; fail=0
check() { if [ "$1" -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $2"; fi; }
finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit; }
bash scripts/get_tokenizer.sh; check $? "scripts/get_tokenizer.sh"
make -s prepare; check $? "building prepare"
[ "$fail" -eq 0 ] || finish
work=$(mktemp -d /tmp/test_prepare_XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in"
docs=()
for i in 1 2 3 4 5; do
    doc="Document number $i says: don't   panic, 12345 times.  Ünïcödé ✓ line two"
    printf '%s' "$doc" > "$work/in/file$i.txt"; docs+=("$doc")
done
printf 'first piece %%1\fsecond piece %%2 \n\n\f\fthird piece %%3' > "$work/in/file6.txt"
docs+=("first piece %1" $'second piece %2 \n\n' "third piece %3")

./prepare encode --in "$work/in/*.txt" --out "$work/a" --prefix t --doc-sep '\f' --val-fraction 0.3 \
    --shard-tokens 40 --seed 5 > "$work/a.log" 2>&1
check $? "prepare encode ($(tail -n 3 "$work/a.log" | tr '\n' ' '))"
./prepare decode "$work"/a/t_train_*.bin > "$work/train.txt"; check $? "decode train"
./prepare decode "$work"/a/t_val_*.bin > "$work/val.txt"; check $? "decode val"
placed=0
both=$(cat "$work/train.txt" "$work/val.txt")
for d in "${docs[@]}"; do  # occurrences of "<|endoftext|>DOC" followed by the next marker or the end
    marked="<|endoftext|>$d"
    rest=${both//"$marked<|endoftext|>"/}; rest=${rest%"$marked"}
    [ $(( (${#both} - ${#rest}) )) -ge ${#marked} ] && placed=$((placed + 1))
done
[ "$placed" -eq 8 ]; check $? "each of the 8 documents in exactly one split ($placed found)"
n_eot=$(./prepare stats "$work"/a/*.bin | tail -n 1 | awk '{print $4}')
[ "$n_eot" = "8" ]; check $? "8 documents counted by stats (got $n_eot)"
[ -s "$work/val.txt" ] && [ -s "$work/train.txt" ]; check $? "both splits non-empty"
ls "$work"/a/t_train_*.bin | wc -l | grep -qv '^1$'; check $? "several train shards with --shard-tokens 40"

./prepare encode --in "$work/in/*.txt" --out "$work/b" --prefix t --doc-sep '\f' --val-fraction 0.3 \
    --shard-tokens 40 --seed 5 --threads 1 > /dev/null 2>&1
diff -r "$work/a" "$work/b" > /dev/null; check $? "same shards from a second run (1 thread vs default)"

cat "$work/in/file1.txt" | ./prepare encode --in - --out "$work/c" --val-fraction 0 > /dev/null 2>&1
./prepare decode < "$work"/c/corpus_train_000000.bin > "$work/stdin.txt"
[ "$(cat "$work/stdin.txt")" = "<|endoftext|>${docs[0]}" ]; check $? "standard input in, standard input out"

out=$(./prepare encode --in "$work/in/*.txt" --out "$work/a" --prefix t 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "t_train_000000.bin already exists" <<< "$out"; check $? "refuses to overwrite shards: $out"
out=$(./prepare encode --in "$work/none/*.txt" --out "$work/d" 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "no file matches --in $work/none/\*.txt" <<< "$out"; check $? "missing input: $out"
head -c 1050 "$work/a/t_train_000000.bin" > "$work/cut.bin"
out=$(./prepare decode "$work/cut.bin" 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "cut.bin" <<< "$out"; check $? "truncated shard: $out"
out=$(./prepare encode --in "$work/in/file1.txt" --out "$work/e" --val-fraction 0.5 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "no document fell into the validation split" <<< "$out"; check $? "empty val split: $out"
finish
