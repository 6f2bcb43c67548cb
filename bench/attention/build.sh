#!/usr/bin/env bash
# Builds, on a machine without a GPU if need be, what the GPU machine runs for the dense
# attention kernels, into one folder (default carry/, git-ignored, sent with the run tool's
# `carry`):
#   bin/test_flash_attn, bin/test_sm90_mma   GPU tests (tests/gpu/run_gpu.sh DIR/bin runs them)
#   libflash_bench.so                        kernels + bench variants for bench_dense.py
#   lib/libgomp.so.1                         in case the GPU machine lacks it (LD_LIBRARY_PATH)
# Needs build/libcore.a (make build/libcore.a). Takes 10-20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-carry}
mkdir -p "$out/obj" "$out/bin" "$out/lib"
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
ARCH="-gencode arch=compute_90a,code=sm_90a"
NV="$NVCC -O3 -std=c++17 $ARCH -I. -lineinfo"
$NV -Xptxas -v -Xcompiler -fPIC -c attention/cuda/flash_attn.cu -o "$out/obj/flash_attn_pic.o" 2> "$out/obj/ptxas_api.txt"
for t in test_flash_attn test_sm90_mma; do
    $NV -c tests/gpu/$t.cu -o "$out/obj/$t.o"
    $NVCC $ARCH "$out/obj/$t.o" "$out/obj/flash_attn_pic.o" build/libcore.a -o "$out/bin/$t" -lm -lgomp
done
$NV -Xptxas -v -Xcompiler -fPIC -c bench/attention/flash_variants.cu -o "$out/obj/flash_variants_pic.o" 2> "$out/obj/ptxas_var.txt"
gcc -O2 -fPIC -std=c11 -D_GNU_SOURCE -I. -c runtime/error.c -o "$out/obj/error_pic.o"
$NVCC -shared $ARCH "$out/obj/flash_attn_pic.o" "$out/obj/flash_variants_pic.o" "$out/obj/error_pic.o" -o "$out/libflash_bench.so"
cp "$(gcc -print-file-name=libgomp.so.1)" "$out/lib/" 2>/dev/null || true
echo "built into $out"
