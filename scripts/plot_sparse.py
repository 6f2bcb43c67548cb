#!/usr/bin/env python3
"""Plots of a sparse attention benchmark (the JSON that bench/scfa.py writes):
  (a) time against the live-tile fraction at one T, hash and qk sweeps, ours and FlexAttention
      (kernel; with its mask build), with the dense cuDNN time as a horizontal line and the
      "cost proportional to live tiles" line (cuDNN time x fraction) for reference;
  (b) speed-up of ours over cuDNN dense against T, one line per configuration.
Usage: scripts/plot_sparse.py RESULTS.json OUT_DIR [--T 16384] [--pass fb|fwd] [--shape tokens]
Writes OUT_DIR/sparse_time_vs_live_T{T}_{pass}.png and OUT_DIR/sparse_speedup_vs_T_{pass}.png.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PASS_NAME = {"fb": "forward+backward", "fwd": "forward"}


def load_rows(path, shape):
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: cannot read benchmark results '{path}': {e}")
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise SystemExit(f"error: '{path}' has no 'rows' list (is it bench/scfa.py output?)")
    for i, r in enumerate(rows):
        for key in ("kind", "T", "shape"):
            if key not in r:
                raise SystemExit(f"error: '{path}': row {i} lacks '{key}'")
    return doc, [r for r in rows if r["shape"] == shape]


def label(r):
    return f"hash nb={r['nb']}" if r["kind"] == "hash" else f"qk drop={r['drop']}"


def plot_time_vs_live(doc, rows, T, pas, out_dir):
    at_t = [r for r in rows if r["T"] == T]
    dense = next((r for r in at_t if r["kind"] == "cudnn" and f"{pas}_ms" in r), None)
    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {"hash": ("tab:blue", "o"), "qk": ("tab:orange", "s")}
    plotted = 0
    for kind, (color, marker) in styles.items():
        pts = sorted((r["live_frac"], r) for r in at_t if r["kind"] == kind and "live_frac" in r)
        for key, name, ls, mfc in ((f"ours_{pas}_ms", "ours", "-", color),
                                   (f"flex_{pas}_ms", "Flex (mask prebuilt)", ":", "none"),
                                   (f"flex_mask_{pas}_ms", "Flex + mask build", "--", "none")):
            xy = [(x, r[key]) for x, r in pts if key in r]
            if not xy:
                continue
            ax.plot([p[0] for p in xy], [p[1] for p in xy], ls, color=color, marker=marker,
                    mfc=mfc, label=f"{kind}: {name}")
            plotted += 1
        for x, r in pts:  # name each point of our sweep with its parameter
            if f"ours_{pas}_ms" in r:
                ax.annotate(str(r["nb"] if kind == "hash" else r["drop"]), (x, r[f"ours_{pas}_ms"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    if plotted == 0:
        plt.close(fig)
        print(f"warning: no sparse rows with {pas} times at T={T}: plot (a) skipped", file=sys.stderr)
        return None
    if dense:
        t = dense[f"{pas}_ms"]
        ax.axhline(t, color="k", lw=1, label=f"cuDNN dense ({t:.2f} ms)")
        ax.plot([0, 1], [0, t], color="gray", lw=0.8, ls="-.", label="cuDNN x live fraction")
    ax.set_xlabel("live tiles / dense causal tiles")
    ax.set_ylabel(f"{PASS_NAME[pas]} time, ms (incl. plan)")
    r0 = at_t[0]
    ax.set_title(f"T={T}, B={r0['B']}, H={r0['H']}, D={r0['D']} ({doc.get('device', '?')})", fontsize=9)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = os.path.join(out_dir, f"sparse_time_vs_live_T{T}_{pas}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_speedup_vs_t(doc, rows, pas, out_dir):
    key = f"speedup_{pas}_vs_cudnn"
    series = {}
    for r in rows:
        if r["kind"] in ("hash", "qk") and key in r:
            series.setdefault(label(r), []).append((r["T"], r[key]))
    if not series:
        print(f"warning: no rows with '{key}': plot (b) skipped", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    names = sorted(series, key=lambda s: (s.split()[0], float(s.split("=")[1])))
    for kind, cmap, style in (("hash", plt.cm.Blues, "-o"), ("qk", plt.cm.Oranges, "--s")):
        mine = [n for n in names if n.startswith(kind)]
        for i, name in enumerate(mine):  # darker = sparser
            pts = sorted(series[name])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=4, label=name,
                    color=cmap(0.35 + 0.65 * (i + 1) / len(mine)))
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(f"speed-up over cuDNN dense ({PASS_NAME[pas]})")
    ax.set_title(f"ours incl. plan vs cuDNN SDPA ({doc.get('device', '?')})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    path = os.path.join(out_dir, f"sparse_speedup_vs_T_{pas}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("out_dir")
    ap.add_argument("--T", type=int, help="T of plot (a); default 16384 if measured, else the largest")
    ap.add_argument("--pass", dest="pas", choices=("fb", "fwd"), default="fb")
    ap.add_argument("--shape", default="tokens", help="tokens or paper (bench/scfa.py --shapes)")
    args = ap.parse_args()
    doc, rows = load_rows(args.results, args.shape)
    if not rows:
        raise SystemExit(f"error: no rows of shape '{args.shape}' in {args.results}")
    ts = sorted({r["T"] for r in rows})
    T = args.T if args.T is not None else (16384 if 16384 in ts else ts[-1])
    if T not in ts:
        raise SystemExit(f"error: T={T} not measured (have {ts})")
    os.makedirs(args.out_dir, exist_ok=True)
    written = [p for p in (plot_time_vs_live(doc, rows, T, args.pas, args.out_dir),
                           plot_speedup_vs_t(doc, rows, args.pas, args.out_dir)) if p]
    for p in written:
        print(p)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
