#!/usr/bin/env bash
# Builds here what bench/device_e2e_ab.sh runs, into the git-ignored carry/e2e/ and
# carry/run/lib/ (send carry = ["carry/e2e", "carry/run/lib"]):
#   bench_step_old      bench_step of OLD_REV (default HEAD~1), built in a scratch worktree
#   bench_step_new      bench_step of the working tree
#   bench_step_serial   a wrapper: the new one with GPT_CUDA_OVERLAP=0
#   bench_ops           the working tree's ops one by one (device_e2e_ab.sh runs it at 16k x 2)
#   test_model_cuda.xz, test_model_cuda_step.xz, test_flash_attn.xz   the working tree's tests
#   carry/run/lib       the shared libraries those need that the device may lack, libcupti too
#   bash bench/build_e2e_carry.sh [OLD_REV]
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD old=${1:-HEAD~1} E=carry/e2e
rm -rf $E; mkdir -p $E carry/run/lib
wt=/tmp/e2e_old_worktree
git worktree remove --force $wt 2>/dev/null || rm -rf $wt
git worktree add --detach -f $wt "$old" >/dev/null
(cd $wt && make --no-print-directory -j"$(nproc)" build/libcore.a >/dev/null && bash "$here/bench/e2e/link_bench.sh" bench_step "$here/$E/bench_step_old")
git worktree remove --force $wt
bash bench/e2e/link_bench.sh bench_step $E/bench_step_new
bash bench/e2e/link_bench.sh bench_ops $E/bench_ops
printf '#!/bin/sh\n# the new bench_step with its weight gradients on the main stream\nGPT_CUDA_OVERLAP=0 exec "$(dirname "$0")/bench_step_new" "$@"\n' > $E/bench_step_serial
chmod +x $E/bench_step_serial
make --no-print-directory -j"$(nproc)" build/tests/gpu/test_model_cuda build/tests/gpu/test_model_cuda_step \
  build/tests/gpu/test_flash_attn >/dev/null
for t in test_model_cuda test_model_cuda_step test_flash_attn; do xz -T2 -c build/tests/gpu/$t > $E/$t.xz; done
bash scripts/carry_libs.sh carry/run/lib $E/bench_step_old $E/bench_step_new $E/bench_ops build/tests/gpu/test_model_cuda
cp -L /usr/local/cuda/lib64/libcupti.so.13 carry/run/lib/
du -sh $E carry/run/lib; ls -la $E
