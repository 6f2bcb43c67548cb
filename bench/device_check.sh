#!/usr/bin/env bash
# One batched GPU session (device time is scarce): runs, on the GPU machine, from the
# repository root, with the binaries that bench/build_carry.sh built here into carry/run/:
#   bash bench/device_check.sh [PART ...]     PART: tests curve nccl e2e scfa multi prof (default:
#                                             tests curve nccl e2e scfa, in this order; multi
#                                             needs several GPUs)
# Logs go to $OUT (default ./device_out); a short table of what ran comes last. Each part runs
# under its own time limit (seconds: TESTS_S, CURVE_S, E2E_S, SCFA_S) so that one slow part
# cannot eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
R=carry/run
mkdir -p "$OUT"
# Libraries this machine lacks travel in $R/lib; NCCL comes from the machine (CUDA or pip).
nccl_pip=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=$PWD/$R/lib:${nccl_pip:+$nccl_pip:}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
parts=${*:-tests curve nccl e2e scfa}
summary=()
note() { summary+=("$1"); echo "== $1"; }
last_line() { tail -n 1 "$1" 2>/dev/null; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
git log -1 --format='commit %h %s' 2>/dev/null | tee "$OUT/commit.txt"
ldd "$R/train" | grep "not found" && echo "!!! $R/train misses libraries (above)"

mkdir -p data/shards # the demo shards the tiny runs read
for f in "$R"/demo/*.bin.xz; do xz -dc "$f" >"data/shards/$(basename "${f%.xz}")"; done

for part in $parts; do
    case $part in
    tests) # GPU test binaries carried in $R/tests; TESTS lists NAME[:ARG] (default: all, no args)
        for spec in ${TESTS:-$(ls "$R/tests")}; do
            name=${spec%%:*}; arg=${spec#"$name"}; arg=${arg#:}
            [ -x "$R/tests/$name" ] || { note "$name: not carried"; continue; }
            timeout "${TESTS_S:-120}" "$R/tests/$name" $arg >"$OUT/$name.log" 2>&1
            rc=$?
            note "$name $arg: $(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/$name.log" | tail -n 1) (exit $rc)"
        done ;;
    curve) # 200 tiny steps GPU vs CPU (the CPU run carried in $R/curve_cpu), determinism
        TRAIN=$R/train CURVE_CPU_DIR=$R/curve_cpu timeout "${CURVE_S:-150}" \
            bash tests/gpu/test_tiny_curve.sh >"$OUT/curve.log" 2>&1
        rc=$?; note "tiny curve + determinism: $(last_line "$OUT/curve.log") (exit $rc)" ;;
    nccl) # the trainer through mpirun -np 1 (MPI + NCCL + ZeRO-1 path) against the plain trainer
        args=(--config configs/tiny.json --set model.n_head=1 --set train.max_steps=20 --device cuda
              --set train.dtype=bf16 --set train.deterministic=true --set train.sample_every=0
              --set train.eval_every=10 --set train.ckpt_every=0)
        timeout 60 "$R/train" "${args[@]}" --out "$OUT/nccl_plain" >"$OUT/nccl_plain.out" 2>&1
        timeout 90 mpirun -np 1 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE "$R/train" "${args[@]}" \
            --out "$OUT/nccl_mpi1" >"$OUT/nccl_mpi1.out" 2>&1
        fields() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    o = json.loads(l)
    if o.get("type") in ("step", "eval"): print(o["type"], o["step"], repr(o.get("loss")), repr(o.get("grad_norm")), repr(o.get("val_loss")))' "$1"; }
        if [ -s "$OUT/nccl_mpi1/log.jsonl" ] && [ "$(fields "$OUT/nccl_plain/log.jsonl" | wc -l)" -ge 20 ] &&
            diff <(fields "$OUT/nccl_plain/log.jsonl") <(fields "$OUT/nccl_mpi1/log.jsonl") >"$OUT/nccl_diff.txt"; then
            note "mpirun -np 1 (NCCL ZeRO-1) vs plain trainer, 20 deterministic steps: identical losses, norms, val losses"
        else
            note "mpirun -np 1 vs plain trainer: DIFFERENT or failed (see nccl_*.out, nccl_diff.txt)"
        fi ;;
    e2e) # GPT-2 small training steps: ours dense / hash nb=16 / qk 0.5, then compiled PyTorch dense
        for c in ${E2E_CONFIGS:-16384x2 8192x4}; do
            for m in dense hash_sparse:16 qk_sparse:0.5; do
                timeout "${E2E_S:-60}" "$R/bench_step" --seq "${c%x*}" --batch "${c#*x}" --steps 5 \
                    --warmup 2 --mode "${m%%:*}" --buckets "${m#*:}" --drop "${m#*:}" \
                    >>"$OUT/e2e.jsonl" 2>>"$OUT/e2e.err" || echo "bench_step $c $m failed" >>"$OUT/e2e.err"
            done
        done
        # The baseline of the issue's end-to-end target: compiled PyTorch, dense (cuDNN SDPA).
        [ "${E2E_TORCH:-1}" = 1 ] && timeout "${TORCH_S:-150}" python3 bench/e2e/torch_gpt.py --modes compile \
            --configs "$(echo ${E2E_CONFIGS:-16384x2 8192x4} | tr ' ' ',')" --steps 5 --warmup 2 \
            >>"$OUT/e2e.jsonl" 2>>"$OUT/e2e.err"
        python3 - "$OUT/e2e.jsonl" <<'PY' | tee "$OUT/e2e_table.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"{'trainer':<22}{'seq x B':>10}{'ms/step':>9}{'tok/s':>9}{'vs our dense':>13}{'vs torch.compile':>17}")
def ratio(r, name):
    ref = [x for x in rows if x["trainer"] == name and x["seq"] == r["seq"] and x["batch"] == r["batch"]]
    return f"{r['tokens_per_s'] / ref[0]['tokens_per_s']:.2f}x" if ref else "-"
for r in rows:
    print(f"{r['trainer']:<22}{str(r['seq']) + ' x ' + str(r['batch']):>10}{r['ms_per_step']:>9.1f}"
          f"{r['tokens_per_s']:>9.0f}{ratio(r, 'scfa-cuda'):>13}{ratio(r, 'torch-compile'):>17}")
PY
        note "e2e: $(wc -l <"$OUT/e2e.jsonl") runs, table in e2e_table.txt" ;;
    scfa) # kernel-level: ours vs cuDNN SDPA vs FlexAttention (bench/scfa.py); SCFA_ARGS holds
          # one or more argument sets separated by '|', run one after another (scfa_K.json/log),
          # each under SCFA_S seconds
        IFS='|' read -r -a scfa_sets <<<"${SCFA_ARGS:---quick}"
        k=0
        for set_args in "${scfa_sets[@]}"; do
            k=$((k + 1))
            timeout "${SCFA_S:-120}" python3 bench/scfa.py --lib "$R/libscfa.so" $set_args \
                --out "$OUT/scfa_$k.json" >"$OUT/scfa_$k.log" 2>&1
            note "scfa bench $k ($set_args): exit $? (table at the end of scfa_$k.log)"
        done ;;
    multi) # several GPUs (issue 8): NCCL equality/resume/refusal, then data-parallel scaling
        cp "$R/train" ./train
        timeout "${MULTI_TEST_S:-300}" bash tests/gpu/test_nccl_2gpu.sh >"$OUT/nccl_2gpu.log" 2>&1
        rc=$?; note "test_nccl_2gpu.sh: $(last_line "$OUT/nccl_2gpu.log") (exit $rc)"
        OUT=$OUT/scaling TRAIN=$R/train timeout "${SCALING_S:-400}" bash bench/scaling.sh \
            >"$OUT/scaling.log" 2>&1
        note "scaling: exit $?"; tail -n 12 "$OUT/scaling.log" ;;
    prof) # Nsight Compute on the first wgmma sparse forward (hash nb=16, T=16384) of the timing run
        timeout "${PROF_S:-60}" ncu --kernel-name-base demangled --kernel-name 'regex:flash_fwd_sm90_kernel.*PlanPolicy' \
            --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
            --section WarpStateStats --section MemoryWorkloadAnalysis \
            "$R/tests/test_sparse_attn" --time-only >"$OUT/ncu_sparse_fwd.txt" 2>&1
        note "ncu sparse forward: exit $? (ncu_sparse_fwd.txt)" ;;
    *) echo "unknown part $part (tests curve nccl e2e scfa multi prof)"; exit 2 ;;
    esac
done

echo
for f in e2e_table.txt; do [ -s "$OUT/$f" ] && cat "$OUT/$f"; done
for f in "$OUT"/scfa_*.log; do [ -s "$f" ] && { echo "-- $f"; sed -n '/^ms, median/,$p' "$f" | head -n 40; }; done
echo "---- summary"
for s in "${summary[@]}"; do echo "$s"; done
# The device tool brings back a limited number of files: everything goes back as one archive
# (checkpoints left out), unpacked here with `tar xzf logs.tgz`.
(cd "$OUT" && find . -type f ! -name '*.bin' ! -name logs.tgz -print0 |
    tar czf logs.tgz --null -T - && find . -mindepth 1 ! -name logs.tgz -delete)
