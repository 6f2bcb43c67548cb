#!/usr/bin/env python3
"""Compares two training runs for the multi-rank tests (tests/test_dist.sh, tests/gpu/*.sh).

  compare_runs.py logs A/log.jsonl B/log.jsonl LOSS_TOL [NORM_TOL] [--steps N]
      step and eval lines: loss and val_loss within LOSS_TOL, grad_norm within NORM_TOL
      (default LOSS_TOL), relative to B; the same number of lines of each kind (or the first N
      step lines with --steps N, and the evals among them). Prints the largest differences.
  compare_runs.py ckpt A.bin B.bin TOL [--moments]
      relative L2 difference of the parameters (and of the AdamW moments with --moments) of two
      checkpoints (docs/FORMATS.md) within TOL.
Exit status 0 when within tolerance, 1 otherwise (or on unreadable input)."""
import json
import math
import struct
import sys


def load_log(path, steps=None):
    rows = []
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            if o.get("type") in ("step", "eval"):
                rows.append(o)
    if steps is not None:
        rows = [o for o in rows if o["step"] <= steps]
    return rows


def compare_logs(a_path, b_path, loss_tol, norm_tol, steps):
    a, b = load_log(a_path, steps), load_log(b_path, steps)
    kinds = lambda rows: [(o["type"], o["step"]) for o in rows]  # noqa: E731
    if not a or kinds(a) != kinds(b):
        print(f"different lines: {len(a)} vs {len(b)} step/eval lines")
        return 1
    tol = {"loss": loss_tol, "val_loss": loss_tol, "grad_norm": norm_tol}
    worst = {k: 0.0 for k in tol}
    for x, y in zip(a, b):
        for k in tol:
            if k in x:
                worst[k] = max(worst[k], abs(x[k] - y[k]) / abs(y[k]))
    print(f"{len(a)} lines, max relative differences: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    return 0 if all(worst[k] <= tol[k] for k in tol) else 1


def ckpt_arrays(path):
    raw = open(path, "rb").read()
    n, = struct.unpack_from("<Q", raw, 32)
    header_len, = struct.unpack_from("<Q", raw, 112)
    off = 120 + header_len
    return [struct.unpack_from(f"<{n}f", raw, off + k * 4 * n) for k in range(3)]


def compare_ckpt(a_path, b_path, tol, moments):
    a, b = ckpt_arrays(a_path), ckpt_arrays(b_path)
    bad = False
    for k, name in enumerate(["params", "m", "v"][:3 if moments else 1]):
        x, y = a[k], b[k]
        num = math.sqrt(sum((p - q) ** 2 for p, q in zip(x, y)))
        den = math.sqrt(sum(q * q for q in y))
        rel = num / den if den else num
        print(f"{name} relative L2 difference {rel:.2e}")
        bad |= len(x) != len(y) or rel > tol
    return 1 if bad else 0


def main(argv):
    args = [x for x in argv if not x.startswith("--")]
    steps = None
    if "--steps" in argv:
        steps = int(argv[argv.index("--steps") + 1])
        args.remove(str(steps))
    try:
        if len(args) >= 4 and args[0] == "logs":
            loss_tol = float(args[3])
            norm_tol = float(args[4]) if len(args) > 4 else loss_tol
            return compare_logs(args[1], args[2], loss_tol, norm_tol, steps)
        if len(args) == 4 and args[0] == "ckpt":
            return compare_ckpt(args[1], args[2], float(args[3]), "--moments" in argv)
    except (OSError, ValueError, KeyError, struct.error) as e:
        print(f"error: {e}")
        return 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
