#!/usr/bin/env python3
"""Instruction census of one kernel from Nsight Compute's SASS source page (the NAME.sass.csv.xz
that bench/device_prof_ws.sh writes): warp-level instructions executed per opcode, per work
unit if --units is given (for the fused backward: consumer warps x tile pairs), the stall
reasons of the warp samples, and the instructions with the most samples.

  python3 bench/prof_census.py prof/bwd_dense.sass.csv.xz [--units N] [--top 20]

Runs on the CPU (Python standard library only), so the census of a device call can be read
here. attention/cuda/NOTES.md v8 has the first one (the dense backward: ~820 instructions per
consumer warp and tile pair).
"""
import argparse
import collections
import csv
import io
import lzma


def opcode(sass):
    words = sass.split()
    op = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "?")
    return op.split(".")[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", help="NAME.sass.csv or NAME.sass.csv.xz from ncu --page source --csv --print-source sass")
    ap.add_argument("--units", type=float, default=0, help="divide executed counts by this (e.g. warps x tiles)")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    opener = lzma.open if args.csv.endswith(".xz") else open
    with opener(args.csv, "rt") as f:
        rows = list(csv.reader(io.StringIO(f.read())))
    hdr_at = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    hdr, data = rows[hdr_at], [r for r in rows[hdr_at + 1:] if len(r) > 5]
    col = {h: i for i, h in enumerate(hdr)}
    samples, executed = col["Warp Stall Sampling (All Samples)"], col["Instructions Executed"]
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    num = lambda r, c: int(r[c] or 0) if r[c].strip().lstrip("-").isdigit() else 0

    ops = collections.Counter()
    for r in data:
        ops[opcode(r[col["Source"]].strip())] += num(r, executed)
    total = sum(ops.values())
    unit = f" per unit ({args.units:g} units)" if args.units else ""
    print(f"executed warp instructions: {total}" + (f", {total / args.units:.1f}{unit}" if args.units else ""))
    for op, n in ops.most_common(args.top):
        print(f"  {op:12s} {n:14d} {100 * n / total:5.1f}%" + (f" {n / args.units:9.1f}" if args.units else ""))

    reasons = collections.Counter()
    for r in data:
        for h in stalls:
            reasons[h] += num(r, col[h])
    s = sum(reasons.values()) or 1
    print(f"\nstall samples: {s}")
    for h, n in reasons.most_common(10):
        print(f"  {h:24s} {n:9d} {100 * n / s:5.1f}%")

    print(f"\ninstructions with the most samples:")
    for r in sorted(data, key=lambda r: -num(r, samples))[: args.top]:
        top = sorted(((num(r, col[h]), h) for h in stalls), reverse=True)[:2]
        why = ", ".join(f"{h[6:]} {n}" for n, h in top if n)
        print(f"  {num(r, samples):8d} {100 * num(r, samples) / s:5.1f}%  {r[col['Source']].strip()[:64]:64s} {why}")


if __name__ == "__main__":
    main()
