#!/usr/bin/env bash
# Builds here what bench/device_exp_poly_check.sh runs, into the git-ignored carry/s16/, every
# binary xz-packed (three bench_steps unpacked would not fit the 64 MiB carry):
#   bench_step_p{0,2,4}.xz     bench_step with the API's forward at FLASH_FWD_EXP_POLY = 0, 2, 4
#   test_flash_attn_p4.xz      test_flash_attn and test_model_cuda of the exp-poly 4 build
#   test_model_cuda_p4.xz
# Needs make build/libcore.a and bench/attention/build.sh carry/flash (test_flash_attn.o).
set -euo pipefail
cd "$(dirname "$0")/.."
NV="${NVCC:-/usr/local/cuda/bin/nvcc} -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I. -lineinfo --expt-relaxed-constexpr"
LIBS="-lcjson -lpcre2-8 -lz -lm -lgomp -lcudart -lcublas -lcublasLt -lnccl $(mpicc --showme:link 2>/dev/null)"
all=$(find model attention -name '*.cu' | sed 's|^\(.*\)\.cu$|build/cuda/\1.o|')
make --no-print-directory build/cuda/bench/e2e/bench_step.o build/cuda/tests/gpu/test_model_cuda.o $all
objs=$(echo "$all" | grep -v '/flash_attn\.o$')
tmp=$(mktemp -d); out=carry/s16
rm -rf $out; mkdir -p $out
for n in 0 2 4; do
    $NV -DFLASH_FWD_EXP_POLY=$n -c attention/cuda/flash_attn.cu -o $tmp/flash_attn_$n.o
    $NV build/cuda/bench/e2e/bench_step.o $objs $tmp/flash_attn_$n.o build/libcore.a -o $tmp/bench_step_p$n -Xcompiler -fopenmp $LIBS
done
$NV build/cuda/tests/gpu/test_model_cuda.o $objs $tmp/flash_attn_4.o build/libcore.a -o $tmp/test_model_cuda_p4 -Xcompiler -fopenmp $LIBS
$NV carry/flash/obj/test_flash_attn.o $tmp/flash_attn_4.o build/libcore.a -o $tmp/test_flash_attn_p4 -lm -lgomp
for b in bench_step_p0 bench_step_p2 bench_step_p4 test_model_cuda_p4 test_flash_attn_p4; do xz -T2 -c $tmp/$b > $out/$b.xz; done
rm -rf $tmp
du -sh $out; ls -la $out
