#!/usr/bin/env bash
# Nsight Compute on the warp-specialised kernels as the trainer runs them (bench_step, GPT-2
# small, dense and hash nb=16 at 8192 x 4): one launch each of the fused backward and the
# forward, full sections plus the SASS-level stall samples (source page, CSV), and the
# hash_center plan kernels of test_plan_cuda. Same carry as device_ws_check.sh; logs under
# $OUT/prof. Run after device_ws_check.sh in the same call: bash bench/device_prof_ws.sh
set -u
OUT=${OUT:-/tmp/out}; P=$OUT/prof; mkdir -p $P
export LD_LIBRARY_PATH=$PWD/carry/flash/lib:$PWD/carry/run/lib:${LD_LIBRARY_PATH:-}
W=/tmp/ws; [ -d $W/main ] || { mkdir -p $W && tar xJf carry/ws/tests.tar.xz -C $W; }
command -v ncu >/dev/null || { echo "no ncu"; exit 0; }
prof() { # name, seconds, kernel regex, command...
    local name=$1 secs=$2 re=$3; shift 3
    timeout $secs ncu --clock-control none --kernel-name-base demangled --kernel-name "regex:$re" --launch-count ${LC:-1} \
        --set full --import-source no -f -o $P/$name "$@" > $P/$name.run.log 2>&1
    echo "$name: ncu exit $?"
    [ -f $P/$name.ncu-rep ] || { tail -3 $P/$name.run.log; return; }
    ncu -i $P/$name.ncu-rep --page details > $P/$name.details.txt 2>&1
    ncu -i $P/$name.ncu-rep --page source --csv --print-source sass > $P/$name.sass.csv 2>&1
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Active Warps Per Scheduler|Eligible Warps" $P/$name.details.txt | head -14
    xz -T4 $P/$name.sass.csv; rm -f $P/$name.ncu-rep
}
B=carry/run/bench_step
# PROFS picks some of them (default: all but fwd_qk, bwd_qk and bwd_dense_4k): PROFS="bwd_dense fwd_dense" bash bench/device_prof_ws.sh
want() { case " ${PROFS:-bwd_dense fwd_dense bwd_hash centre} " in *" $1 "*) return 0;; esac; return 1; }
want bwd_dense && prof bwd_dense 90 'flash_bwd_dkdv_sm90_ws_kernel' $B --seq 8192 --batch 4 --steps 1 --warmup 0 --mode dense
want fwd_dense && prof fwd_dense 90 'flash_fwd_sm90_ws_kernel' $B --seq 8192 --batch 4 --steps 1 --warmup 0 --mode dense
want fwd_qk && prof fwd_qk 90 'flash_fwd_sm90_ws_kernel' $B --seq 16384 --batch 2 --steps 1 --warmup 0 --mode qk_sparse --drop 0.5
want bwd_qk && prof bwd_qk 90 'flash_bwd_dkdv_sm90_ws_kernel' $B --seq 16384 --batch 2 --steps 1 --warmup 0 --mode qk_sparse --drop 0.5
want bwd_dense_4k && prof bwd_dense_4k 90 'flash_bwd_dkdv_sm90_ws_kernel' $B --seq 4096 --batch 16 --steps 1 --warmup 0 --mode dense
want bwd_hash && prof bwd_hash 90 'flash_bwd_dkdv_sm90_ws_kernel' $B --seq 8192 --batch 4 --steps 1 --warmup 0 --mode hash_sparse --buckets 16
want centre && LC=2 prof centre 60 'centre_' $W/main/test_plan_cuda
ls -la $P
