# Sourced by the bench/device_*_check.sh scripts, on the GPU machine, from the repository root:
# OUT (logs), T0 and el (seconds since the start), the GPU test binaries of carry/ws unpacked
# under W, the carried libraries on LD_LIBRARY_PATH, and the GPU's name in $OUT/gpu.txt.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
W=/tmp/ws; mkdir -p $W && tar xJf carry/ws/tests.tar.xz -C $W
export LD_LIBRARY_PATH=$PWD/carry/flash/lib:$PWD/carry/run/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
