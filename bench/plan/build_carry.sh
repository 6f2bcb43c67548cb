#!/usr/bin/env bash
# Builds the GPU plan test and benchmark here (nvcc, sm_90a) into the git-ignored carry/plan/,
# with the shared libraries the device machine may lack, so that one `run` call can do:
#   export LD_LIBRARY_PATH=$PWD/carry/plan/lib; carry/plan/test_plan_cuda; carry/plan/bench_plan
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
FLAGS="-O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I. -lineinfo --expt-relaxed-constexpr"
mkdir -p carry/plan/lib build/cuda/attention/cuda
make build/libcore.a >/dev/null
# Other builds may rewrite build/libcore.a meanwhile: link a checked snapshot of it.
cp build/libcore.a carry/plan/libcore.a
ar t carry/plan/libcore.a | grep -q '^plan_tiles.o$' || { echo "build/libcore.a is incomplete, retry" >&2; exit 1; }
LIBS="carry/plan/libcore.a -lcjson -lpcre2-8 -lz -lm -lgomp -lcudart"
OBJ=build/cuda/attention/cuda/plan_cuda.o
if [ ! -f $OBJ ] || [ -n "$(find attention/cuda/plan_*.c* attention/cuda/plan_*.cuh attention/plan_cuda.h attention/plan_tiles.h -newer $OBJ)" ]; then
    $NVCC $FLAGS -c attention/cuda/plan_cuda.cu -o $OBJ
fi
$NVCC $FLAGS tests/gpu/test_plan_cuda.cu $OBJ $LIBS -o carry/plan/test_plan_cuda
$NVCC $FLAGS bench/plan/bench_plan.cu $OBJ $LIBS -o carry/plan/bench_plan
for lib in libcjson.so.1 libpcre2-8.so.0 libgomp.so.1; do
    cp -L /usr/lib/x86_64-linux-gnu/$lib carry/plan/lib/
done
ls -la carry/plan
