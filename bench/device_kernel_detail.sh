#!/usr/bin/env bash
# On the GPU machine: ncu's full section set and its per-instruction (SASS) stall samples for
# one launch of one kernel in a bench_step step, to see what limits a kernel instruction by
# instruction. Needs carry/run/lib (bench/build_carry.sh) for the binary's shared libraries.
#   KERNEL=regex [CONFIG=16384x2] [BIN=carry/e2e/bench_step_new] [SKIP=2] \
#     bash bench/device_kernel_detail.sh NAME
# Writes $OUT/NAME.txt (the details page) and $OUT/NAME_sass.csv (the source page, SASS with
# its stall-reason columns); prints the headline metrics.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export LD_LIBRARY_PATH=$PWD/carry/run/lib:${LD_LIBRARY_PATH:-}
name=${1:?usage: KERNEL=regex bash bench/device_kernel_detail.sh NAME}
C=${CONFIG:-16384x2}
timeout 150 ncu --clock-control none --set full --import-source yes --kernel-name "regex:${KERNEL:?}" \
  --launch-skip ${SKIP:-2} --launch-count 1 -f -o /tmp/$name ${BIN:-carry/e2e/bench_step_new} \
  --seq ${C%x*} --batch ${C#*x} --steps 1 --warmup 0 --mode dense > $OUT/$name.ncu.log 2>&1
echo "ncu $name rc $?"
ncu --import /tmp/$name.ncu-rep --page details > $OUT/$name.txt 2>&1
ncu --import /tmp/$name.ncu-rep --page source --csv --print-source sass > $OUT/${name}_sass.csv 2>&1
grep -E "^  [A-Za-z]|Duration|Compute \(SM\) Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit Registers|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" $OUT/$name.txt | head -40
