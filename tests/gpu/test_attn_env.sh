#!/usr/bin/env bash
# The CUDA trainer's attention environment variables (README.md): a value it does not know stops
# the run at start-up with exit status 2 and a message naming the variable; a known one is
# named in the log header's device line. Run on the GPU machine from the repository root, after
# ./train is built; it writes its own small token shards (random ids, docs/FORMATS.md).
set -u
cd "$(dirname "$0")/../.."
TRAIN=${TRAIN:-./train}
work=$(mktemp -d /tmp/attn_env.XXXXXX)
python3 - "$work" <<'PY'
import random, struct, sys
random.seed(1)
for split in ("train", "val"):
    ids = [50256] + [random.randrange(50257) for _ in range(65535)]
    with open(f"{sys.argv[1]}/env_{split}_000000.bin", "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, len(ids), *[0] * 253) + struct.pack(f"<{len(ids)}H", *ids))
PY
common=(--config configs/tiny.json --set model.n_head=1 --set train.max_steps=2 --set optim.warmup_steps=1
        --set train.sample_every=0 --set train.eval_every=0 --set train.ckpt_every=0 --device cuda
        --set train.dtype=bf16 --set "data.train=$work/env_train_*.bin" --set "data.val=$work/env_val_*.bin")
pass=0; fail=0
check() { # check DESCRIPTION COMMAND...
    if "${@:2}"; then pass=$((pass + 1)); echo "ok: $1"; else fail=$((fail + 1)); echo "FAIL: $1"; fi
}

# each a set of assignments; the message must name the first variable
for bad in FLASH_BWD_SCHEDULE=sideways FLASH_BWD_QUERY_TILE=96 "FLASH_BWD_SCHEDULE=alternate FLASH_BWD_QUERY_TILE=128" \
           FLASH_HEAD_GROUP=0 FLASH_HEAD_GROUP=4x SPARSE_QK_FWD_KEYS=96; do
    env $bad "$TRAIN" "${common[@]}" --out "$work/bad" >"$work/bad.out" 2>&1
    rc=$?
    check "$bad: exit 2 (got $rc)" test "$rc" = 2
    check "$bad: the message names ${bad%%=*}" grep -q "${bad%%=*}" "$work/bad.out"
done

FLASH_BWD_SCHEDULE=deferred FLASH_BWD_QUERY_TILE=128 FLASH_HEAD_GROUP=3 SPARSE_QK_FWD_KEYS=64 "$TRAIN" "${common[@]}" --out "$work/good" >"$work/good.out" 2>&1
rc=$?
check "deferred, tile 128: the run completes (got $rc)" test "$rc" = 0
check "the device line names the schedule, the tile, the head group and the qk keys" \
    grep -q '"device":"[^"]*attention backward deferred, dense query tile 128, head group 3, qk forward keys 64' "$work/good/log.jsonl"
[ "$fail" = 0 ] || tail -5 "$work/good.out"
env -u FLASH_BWD_SCHEDULE FLASH_BWD_QUERY_TILE=128 "$TRAIN" "${common[@]}" --out "$work/tile128" >"$work/tile128.out" 2>&1
rc=$?
check "tile 128, schedule unset: the run completes (got $rc)" test "$rc" = 0
check "tile 128, schedule unset: deferred (alternate has no 128-query tile)" \
    grep -q '"device":"[^"]*attention backward deferred, dense query tile 128' "$work/tile128/log.jsonl"
env -u FLASH_BWD_SCHEDULE -u FLASH_BWD_QUERY_TILE -u FLASH_HEAD_GROUP -u SPARSE_QK_FWD_KEYS "$TRAIN" "${common[@]}" --out "$work/unset" >"$work/unset.out" 2>&1
rc=$?
check "schedule and tile unset: the run completes (got $rc)" test "$rc" = 0
check "all unset: alternate, tile 64, head group auto, qk keys 128" \
    grep -q '"device":"[^"]*attention backward alternate, dense query tile 64, head group auto, qk forward keys 128' "$work/unset/log.jsonl"
rm -rf "$work"
echo "$pass passed, $fail failed"
