#!/bin/bash
# Runs on the device machine (after bench/e2e/build_gpu.sh here, with carry/ carried):
#   bash bench/e2e/run_device.sh tests ours torch     # any subset, in this order
# GPU tests, then the C/CUDA step benchmark, then the PyTorch reference (eager + compiled),
# logs under $OUT (or ./e2e_out), and a short table last.
set -uo pipefail
OUT=${OUT:-e2e_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=carry/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
CONFIGS=${CONFIGS:-"8192x4 16384x2"}
status=0
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
for what in "$@"; do
    case $what in
    tests)
        for t in test_model_cuda test_model_cuda_step; do
            ./carry/$t >"$OUT/$t.log" 2>&1 || status=1
            echo "$t: $(tail -n 1 "$OUT/$t.log")"
        done ;;
    ours) # MODES: dense, hash_sparse:NB, qk_sparse:DROP (default: dense)
        for c in $CONFIGS; do
            for m in ${MODES:-dense}; do
                ./carry/bench_step --seq "${c%x*}" --batch "${c#*x}" --steps "${STEPS:-10}" --warmup 3 \
                    --mode "${m%%:*}" --buckets "${m#*:}" --drop "${m#*:}" \
                    2>&1 | tee -a "$OUT/bench.jsonl" || status=1
            done
        done ;;
    torch)
        python3 bench/e2e/torch_gpt.py --modes "${TORCH_MODES:-eager,compile}" \
            --configs "$(echo $CONFIGS | tr ' ' ',')" --steps "${STEPS:-10}" 2>"$OUT/torch.err" \
            | tee -a "$OUT/bench.jsonl" || status=1 ;;
    *) echo "unknown part $what (tests, ours, torch)"; exit 2 ;;
    esac
done
if [ -s "$OUT/bench.jsonl" ]; then
    python3 - "$OUT/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"{'trainer':<20}{'seq x B':>10}{'ms/step':>9}{'tok/s':>9}{'mem GiB':>9}{'vs compiled':>12}{'vs our dense':>13}")
def ratio(r, name):
    ref = [x for x in rows if x["trainer"] == name and x["seq"] == r["seq"] and x["batch"] == r["batch"]]
    return f"{r['tokens_per_s'] / ref[0]['tokens_per_s']:.3f}x" if ref else "-"
for r in rows:
    mem = r.get("peak_alloc_gib", r.get("device_used_gib"))
    print(f"{r['trainer']:<20}{str(r['seq']) + ' x ' + str(r['batch']):>10}{r['ms_per_step']:>9.1f}{r['tokens_per_s']:>9.0f}"
          f"{mem:>9.2f}{ratio(r, 'torch-compile'):>12}{ratio(r, 'scfa-cuda'):>13}")
PY
fi
exit $status
