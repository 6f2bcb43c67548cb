#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (--csv --page raw, metric gpu__time_duration.sum) by kernel name and
prints the largest (14, or argv[2]): where one training step spends its GPU time, kernel by kernel."""
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
hdr = None
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows:
    if "Kernel Name" in r and "gpu__time_duration.sum" in r:
        hdr = r; continue
    if hdr is None or len(r) != len(hdr): continue
    name = r[hdr.index("Kernel Name")][:90]
    try: v = float(r[hdr.index("gpu__time_duration.sum")].replace(",", ""))
    except ValueError: continue
    tot[name] += v; cnt[name] += 1
s = sum(tot.values())
print(f"total {s/1e6:.2f} ms over {sum(cnt.values())} kernels")
for n, v in sorted(tot.items(), key=lambda x: -x[1])[:int(sys.argv[2]) if len(sys.argv) > 2 else 14]:
    print(f"{v/1e6:9.3f} ms {cnt[n]:5d}x  {n}")
