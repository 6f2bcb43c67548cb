#!/usr/bin/env python3
"""Summarises a bench_step --trace CSV (bench/e2e/kernel_trace.cu): for the last step, each
phase's wall time (between the host's marks, which follow a synchronisation), the time some
kernel was running (the union of the kernels' intervals), the idle time between kernels, and
the kernels' in-stream durations by name, largest first: where a step's wall time goes that an
ncu census (kernels run one by one) cannot show.
  python3 bench/e2e/trace_summary.py trace.csv [top]"""
import csv, sys, collections

rows = list(csv.DictReader(open(sys.argv[1])))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 16
marks = [(r["label"], int(r["start_ns"])) for r in rows if r["kind"] == "mark"]
kernels = sorted((int(r["start_ns"]), int(r["end_ns"]), r["label"], r["stream"]) for r in rows if r["kind"] == "kernel")
starts = [i for i, (label, _) in enumerate(marks) if label == "step"]
if not starts or len(marks) < starts[-1] + 4:
    sys.exit(f"{sys.argv[1]}: no complete step (marks: {[m[0] for m in marks]})")
step = marks[starts[-1]:starts[-1] + 4] # step, forward, backward, update

def union(iv):
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(iv):
        if cur_e is None or s > cur_e:
            if cur_e is not None: total += cur_e - cur_s
            cur_s, cur_e = s, e
        else: cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0)

print(f"{len(kernels)} kernels in the trace; the last step's phases (ms):")
print(f"{'phase':10s} {'wall':>8s} {'busy':>8s} {'idle':>8s} {'kernels':>8s} {'sum':>8s}")
for (_, a), (label, b) in zip(step, step[1:]):
    iv = [(max(s, a), min(e, b)) for s, e, _, _ in kernels if e > a and s < b]
    busy = union(iv)
    print(f"{label:10s} {(b - a) / 1e6:8.2f} {busy / 1e6:8.2f} {(b - a - busy) / 1e6:8.2f} {len(iv):8d} {sum(e - s for s, e in iv) / 1e6:8.2f}")
a, b = step[0][1], step[-1][1]
tot = collections.defaultdict(int); cnt = collections.Counter(); streams = collections.Counter()
gaps = []
prev_end = None
for s, e, name, stream in kernels:
    if e <= a or s >= b: continue
    key = name[:90]
    tot[key] += e - s; cnt[key] += 1; streams[stream] += 1
    if prev_end is not None and s > prev_end: gaps.append(s - prev_end)
    prev_end = e if prev_end is None else max(prev_end, e)
gaps.sort()
if gaps:
    q = lambda f: gaps[int(f * (len(gaps) - 1))] / 1e3
    print(f"gaps between kernels: {len(gaps)}, median {q(.5):.1f} us, p90 {q(.9):.1f} us, max {q(1):.1f} us, "
          f"sum {sum(gaps) / 1e6:.2f} ms; kernels per stream {dict(streams)}")
print("in-stream time by kernel (ms, count):")
for key, v in sorted(tot.items(), key=lambda x: -x[1])[:top]:
    print(f"{v / 1e6:9.3f} {cnt[key]:5d}x  {key}")
