#!/usr/bin/env bash
# Data-parallel scaling on one multi-GPU host (issue 8), run there from the repository root with
# the binaries bench/build_carry.sh builds into carry/run and the demo shards bench/device_check.sh
# unpacks into data/shards/:
#   bash bench/scaling.sh [N ...]          (default: 1 and every power of 2 up to the GPU count)
# For each config (GPT-2 small: 8k dense, 8k hash nb=16, 16k dense) and each N, `mpirun -np N`
# trains a few steps with the same per-GPU micro-batch and 2 micro-batches per rank (so the
# reduce-scatter of the last one overlaps its backward), N = 1 also through mpirun so every run
# takes the same NCCL path. Speed is irrelevant to the data, so the demo shards stand in for the
# corpus. Prints tokens/s (median of the steps after the first 3) and the scaling efficiency:
# (tokens/s per GPU on N) / (tokens/s on 1). Logs in $OUT (default ./scaling_out).
# Overrides: TRAIN (default carry/run/train), DEVICE (cuda; cpu to try the script here),
# CONFIGS ("name:config:micro" ...), STEPS (default 8).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-scaling_out}
TRAIN=${TRAIN:-carry/run/train}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-8}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nccl_pip=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH=$PWD/carry/run/lib:${nccl_pip:+$nccl_pip:}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}

if [ $# -gt 0 ]; then ns="$*"
elif [ "$DEVICE" = cuda ]; then
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
    ns=1; n=2; while [ "$n" -le "$gpus" ]; do ns="$ns $n"; n=$((n * 2)); done
else ns="1 2"; fi
CONFIGS=${CONFIGS:-"8k-dense:configs/gpt_8k.json:4 8k-hash16:configs/gpt_8k_hash.json:4 16k-dense:configs/gpt_16k.json:2"}
dtype=bf16; [ "$DEVICE" = cpu ] && dtype=fp32

for c in $CONFIGS; do
    IFS=: read -r name cfg micro <<<"$c"
    seq=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"]["seq_len"])' "$cfg")
    for n in $ns; do
        dir=$OUT/$name-np$n
        rm -rf "$dir"
        timeout "${RUN_S:-300}" mpirun -np "$n" --bind-to none -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE \
            "$TRAIN" --config "$cfg" --device "$DEVICE" --out "$dir" \
            --set data.train='data/shards/demo_train_*.bin' --set data.val='data/shards/demo_val_*.bin' \
            --set train.dtype=$dtype --set train.micro_batch="$micro" \
            --set train.total_batch_tokens=$((2 * n * micro * seq)) --set train.max_steps="$STEPS" \
            --set optim.warmup_steps=2 --set train.eval_every=0 --set train.ckpt_every=0 \
            --set train.sample_every=0 >"$OUT/$name-np$n.out" 2>&1 ||
            echo "$name np$n: exit $? (see $OUT/$name-np$n.out)"
    done
done

python3 - "$OUT" $ns <<'EOF'
import json, os, statistics, sys
out, ns = sys.argv[1], [int(x) for x in sys.argv[2:]]
def steps(path):
    try:
        return [json.loads(l) for l in open(path) if '"type":"step"' in l][3:]
    except OSError:
        return []
def med(rows, key):
    v = [s[key] for s in rows if key in s]
    return statistics.median(v) if v else None
names = sorted({d.rsplit("-np", 1)[0] for d in os.listdir(out) if "-np" in d and os.path.isdir(os.path.join(out, d))})
print("tokens/s: median over the steps after the first 3; efficiency = (tokens/s per GPU on N) / (tokens/s on 1);")
print("comm = rank 0's NCCL reduce-scatter + all-gather time per step, exposed = the part the step waited for")
print(f"{'config':<12}{'GPUs':>5}{'ms/step':>9}{'tokens/s':>11}{'per GPU':>10}{'efficiency':>12}{'comm ms':>9}{'exposed':>9}")
for name in names:
    base = med(steps(os.path.join(out, f"{name}-np1", "log.jsonl")), "tokens_per_s")
    for n in ns:
        rows = steps(os.path.join(out, f"{name}-np{n}", "log.jsonl"))
        t = med(rows, "tokens_per_s")
        if t is None:
            print(f"{name:<12}{n:>5}{'failed':>11}"); continue
        eff = f"{t / n / base:.3f}" if base else "-"
        c, e = med(rows, "comm_ms"), med(rows, "comm_exposed_ms")
        fmt = lambda x: f"{x:9.2f}" if x is not None else f"{'-':>9}"  # noqa: E731
        print(f"{name:<12}{n:>5}{med(rows, 'ms'):9.1f}{t:>11.0f}{t / n:>10.0f}{eff:>12}{fmt(c)}{fmt(e)}")
EOF
