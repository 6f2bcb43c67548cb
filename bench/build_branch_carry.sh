#!/usr/bin/env bash
# Builds another branch's GPU binaries into carry/qk/ of this checkout, for a device call that
# also runs main's carry/run (bench/device_flex_qk_call.sh): the branch's test_sparse_attn
# packed as carry/qk/ws/tests.tar.xz (main/ inside, as bench/device_env.sh unpacks it), its
# bench_step and shared libraries in carry/qk/run, and its device_qk_keys_check.sh.
#   bash bench/build_branch_carry.sh [BRANCH]      (default wip/qk-fwd-keys; worktree /tmp/qk)
set -euo pipefail
cd "$(dirname "$0")/.."
BR=${1:-wip/qk-fwd-keys}; WT=/tmp/qk
git worktree prune
[ -d $WT ] || git worktree add $WT "$BR"
[ "$(git -C $WT rev-parse --abbrev-ref HEAD)" = "$BR" ] || { echo "error: $WT is not on $BR" >&2; exit 1; }
(cd $WT && make --no-print-directory build/libcore.a build/tests/gpu/test_sparse_attn && bash bench/build_carry.sh)
rm -rf carry/qk && mkdir -p carry/qk/pack/main carry/qk/ws carry/qk/run
cp $WT/build/tests/gpu/test_sparse_attn carry/qk/pack/main/
tar cJf carry/qk/ws/tests.tar.xz -C carry/qk/pack main && rm -rf carry/qk/pack
cp -r $WT/carry/run/bench_step $WT/carry/run/lib carry/qk/run/
cp $WT/bench/device_qk_keys_check.sh carry/qk/
echo "carry/qk from $BR at $(git -C $WT rev-parse --short HEAD): $(du -sh carry/qk | cut -f1)"
