#!/usr/bin/env bash
# One device call (~50 s) after a change to the fused backward or the forward that touches
# every instance: the flash and model GPU tests and the sparse tests under each
# (FLASH_BWD_QUERY_TILE, FLASH_BWD_SCHEDULE) pair (CFGS="tile/schedule ..." picks some), the
# trainer's environment checks, and the SASS of the API's default kernels (dense causal:
# alternate fused backward, ping-pong forward), to read here (this machine has no cuobjdump).
# Same carry as bench/device_ws_check.sh. Logs under $OUT, one line per check.
set -u
. bench/device_env.sh
for cfg in ${CFGS:-64/deferred 64/lockstep 64/pingpong 64/alternate 128/lockstep 128/deferred 128/pingpong}; do
  t=${cfg%/*}; s=${cfg#*/}
  export FLASH_BWD_QUERY_TILE=$t FLASH_BWD_SCHEDULE=$s
  SKIP_GPU_SCRIPTS=1 GPU_TEST_TIMEOUT=30 bash tests/gpu/run_gpu.sh carry/flash/bin > $OUT/flash_${t}_$s.log 2>&1
  echo "flash tile $t $s: $(tail -1 $OUT/flash_${t}_$s.log) ($(el) s)"; grep -iE "fail|mismatch" $OUT/flash_${t}_$s.log | head -3
  # every grid (persistent ones too) for the default pair, the Hopper kernels for the others
  only=1; [ $cfg = 64/deferred ] && only=0
  SPARSE_TEST_HOPPER_ONLY=$only timeout 70 $W/main/test_sparse_attn > $OUT/sparse_${t}_$s.log 2>&1
  echo "sparse tile $t $s: rc $? $(tail -1 $OUT/sparse_${t}_$s.log) ($(el) s)"; grep -iE "fail|mismatch" $OUT/sparse_${t}_$s.log | head -3
  case $s in deferred|alternate) timeout 60 $W/main/test_model_cuda > $OUT/model_$t.log 2>&1
    echo "model tile $t: rc $? $(tail -1 $OUT/model_$t.log)";; esac
done
unset FLASH_BWD_QUERY_TILE FLASH_BWD_SCHEDULE
SPARSE_QK_FWD_KEYS=64 SPARSE_TEST_HOPPER_ONLY=1 timeout 70 $W/main/test_sparse_attn > $OUT/sparse_qk_keys64.log 2>&1
echo "sparse, qk forward on 64-key tiles: rc $? $(tail -1 $OUT/sparse_qk_keys64.log) ($(el) s)"
TRAIN=carry/run/train timeout 90 bash tests/gpu/test_attn_env.sh > $OUT/attn_env.log 2>&1; echo "trainer env checks: rc $? $(tail -1 $OUT/attn_env.log)"
if command -v cuobjdump >/dev/null; then
  lib=carry/flash/libflash_bench.so
  for k in "flash_bwd_dkdv_sm90_ws_kernelINS_14Sm90BwdWsTilesILi2ELi2ELb1ELb1ELb0ELi64ELb1EEENS_17DenseCausalPolicyELb0E" \
           "flash_fwd_sm90_ws_kernelINS_14Sm90FwdWsTilesILi2ELi128ELi3ELb1EEENS_17DenseCausalPolicyELb0E"; do
    f=$(cuobjdump -sass $lib 2>/dev/null | grep -oE "Function : _ZN5flash[0-9]+$k[A-Za-z0-9_]*" | head -1 | sed 's/Function : //')
    [ -n "$f" ] && cuobjdump -sass -fun "$f" $lib > $OUT/${k%%INS*}.sass 2>/dev/null
    echo "SASS ${k%%INS*}: $(wc -l < $OUT/${k%%INS*}.sass) lines"
  done
else echo "no cuobjdump"; fi
echo "total $(el) s"
