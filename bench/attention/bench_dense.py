#!/usr/bin/env python3
"""Dense causal attention: our flash kernels against PyTorch SDPA (cuDNN and flash backends),
in one process on one GPU, same inputs, same timer.

Usage (on the GPU machine):
  python3 bench/attention/bench_dense.py --lib carry/libflash_bench.so [--seqs 1024,4096,...]
      [--tokens 65536] [--heads 12] [--dim 64] [--variants [--rounds N]] [--out results.json]

The library is attention/cuda/flash_attn.cu + bench/attention/flash_variants.cu built as one
shared object (see attention/cuda/NOTES.md for the command). Inputs are [B][T][H][D] bf16
with B*T = --tokens; torch gets the same storage as [B][H][T][D] views. Times are medians of
CUDA-event-timed repetitions after warm-up. FLOPs: causal forward 2*B*T^2*H*D, forward +
backward 3.5x that. Also printed: our outputs against cuDNN's (relative L2), so a fast wrong
kernel cannot hide. The short table comes last.
"""
import argparse
import ctypes
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from scfa import median_ms  # noqa: E402 (bench/scfa.py: one timer for every attention bench)


class Dims(ctypes.Structure):
    _fields_ = [("B", ctypes.c_int), ("T", ctypes.c_int), ("H", ctypes.c_int),
                ("D", ctypes.c_int), ("exclude_self", ctypes.c_int),
                ("q_stride", ctypes.c_long), ("k_stride", ctypes.c_long),
                ("v_stride", ctypes.c_long), ("o_stride", ctypes.c_long),
                ("work_counter", ctypes.c_void_p)]


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


class Ours:
    def __init__(self, lib, B, T, H, D):
        self.lib = lib
        # the API's persistent grids draw tiles from this counter, as the trainer's do
        self.counter = torch.zeros(1, dtype=torch.int32, device="cuda")
        self.dims = Dims(B, T, H, D, 0, H * D, H * D, H * D, H * D, self.counter.data_ptr())
        ws = lib.flash_attn_backward_workspace_bytes(ctypes.byref(self.dims), 0)
        self.ws = torch.empty(ws, dtype=torch.uint8, device="cuda")
        self.lse = torch.empty(B * H * T, dtype=torch.float32, device="cuda")

    def stream(self):
        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    def fwd(self, q, k, v, out, variant=0):
        rc = self.lib.bench_fwd_variant(variant, ctypes.byref(self.dims), q.data_ptr(),
                                        k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                        self.lse.data_ptr(), self.stream())
        if rc != 0:
            raise RuntimeError(f"forward variant {variant} failed ({rc})")

    def bwd(self, q, k, v, out, dout, dq, dk, dv, variant=0, deterministic=False):
        if deterministic:
            self.lib.flash_attn_backward(ctypes.byref(self.dims), q.data_ptr(), k.data_ptr(),
                                         v.data_ptr(), out.data_ptr(), self.lse.data_ptr(),
                                         dout.data_ptr(), dq.data_ptr(), dk.data_ptr(),
                                         dv.data_ptr(), self.ws.data_ptr(), 1, self.stream())
            return
        rc = self.lib.bench_bwd_variant(variant, ctypes.byref(self.dims), q.data_ptr(),
                                        k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                        self.lse.data_ptr(), dout.data_ptr(), dq.data_ptr(),
                                        dk.data_ptr(), dv.data_ptr(), self.ws.data_ptr(),
                                        self.stream())
        if rc != 0:
            raise RuntimeError(f"backward variant {variant} failed ({rc})")


def torch_sdpa(backend, q, k, v, dout, with_grad):
    """q, k, v: [B][T][H][D] leaves; SDPA sees [B][H][T][D] views of the same storage."""
    with sdpa_kernel(backend):
        if not with_grad:
            with torch.no_grad():
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                      v.transpose(1, 2), is_causal=True)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        return o, torch.autograd.grad(o, (q, k, v), dout.transpose(1, 2))


def bench_one(lib, T, tokens, H, D, variants, log, only=None, rounds=1):
    B = max(1, tokens // T)
    gen = torch.Generator(device="cuda").manual_seed(T)
    mk = lambda: torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    q, k, v, dout = mk(), mk(), mk(), mk()
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    ours = Ours(lib, B, T, H, D)
    out = torch.empty_like(q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(q), torch.empty_like(q)
    flops_fwd = 2.0 * B * T * T * H * D
    row = {"T": T, "B": B, "H": H, "D": D}

    # Correctness against cuDNN at this size (cuDNN's own error vs fp32 is similar).
    o_ref, (dq_ref, dk_ref, dv_ref) = torch_sdpa(SDPBackend.CUDNN_ATTENTION, qg, kg, vg, dout, True)
    ours.fwd(q, k, v, out)
    ours.bwd(q, k, v, out, dout, dq, dk, dv)
    torch.cuda.synchronize()
    row["err_vs_cudnn"] = {"out": rel(out, o_ref.transpose(1, 2)), "dq": rel(dq, dq_ref),
                           "dk": rel(dk, dk_ref), "dv": rel(dv, dv_ref)}
    ours.bwd(q, k, v, out, dout, dq, dk, dv, deterministic=True)
    torch.cuda.synchronize()
    row["err_vs_cudnn_det"] = {"dq": rel(dq, dq_ref), "dk": rel(dk, dk_ref), "dv": rel(dv, dv_ref)}
    del o_ref, dq_ref, dk_ref, dv_ref

    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        row[name + "_fwd"] = median_ms(lambda: torch_sdpa(backend, q, k, v, dout, False))
        row[name + "_fb"] = median_ms(lambda: torch_sdpa(backend, qg, kg, vg, dout, True))
    row["ours_fwd"] = median_ms(lambda: ours.fwd(q, k, v, out))
    row["ours_fb"] = median_ms(lambda: (ours.fwd(q, k, v, out),
                                        ours.bwd(q, k, v, out, dout, dq, dk, dv)))
    row["ours_fb_det"] = median_ms(lambda: (ours.fwd(q, k, v, out),
                                            ours.bwd(q, k, v, out, dout, dq, dk, dv, deterministic=True)))
    row["ours_fwd_tflops"] = flops_fwd / row["ours_fwd"] / 1e9
    row["ours_fb_tflops"] = 3.5 * flops_fwd / row["ours_fb"] / 1e9
    if variants and D == 64:
        row["fwd_variants"], row["bwd_variants"] = {}, {}
        timers = []  # (key, name, vi, timing function), in variant order
        for is_fwd, key in ((1, "fwd_variants"), (0, "bwd_variants")):
            vi = 1
            while lib.bench_variant_name(is_fwd, vi):
                name = lib.bench_variant_name(is_fwd, vi).decode()
                if only is not None and vi not in only[is_fwd]:
                    vi += 1
                    continue
                if is_fwd:
                    ours.fwd(q, k, v, out, vi)
                    torch.cuda.synchronize()
                    err = rel(out, torch_sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v, dout, False).transpose(1, 2))
                    run = lambda vi=vi: ours.fwd(q, k, v, out, vi)
                else:
                    ours.fwd(q, k, v, out)
                    ours.bwd(q, k, v, out, dout, dq, dk, dv, variant=vi)
                    torch.cuda.synchronize()
                    _, refs = torch_sdpa(SDPBackend.CUDNN_ATTENTION, qg, kg, vg, dout, True)
                    err = max(rel(dq, refs[0]), rel(dk, refs[1]), rel(dv, refs[2]))
                    run = lambda vi=vi: ours.bwd(q, k, v, out, dout, dq, dk, dv, variant=vi)
                row[key][name] = {"err": err, "runs": []}
                timers.append((key, name, vi, run))
                vi += 1
        # Rounds: every variant once per round, each round starting one variant later, so that
        # a slot's drift (clocks, heat) spreads over all variants; ms = median over the rounds.
        for rnd in range(rounds):
            for j in range(len(timers)):
                key, name, vi, run = timers[(j + rnd) % len(timers)]
                row[key][name]["runs"].append(median_ms(run))
        for key, name, vi, run in timers:
            m = row[key][name]
            m["ms"] = sorted(m["runs"])[len(m["runs"]) // 2]
            spread = f" (rounds {min(m['runs']):.3f}-{max(m['runs']):.3f})" if rounds > 1 else ""
            print(f"T {T} {'fwd' if key == 'fwd_variants' else 'bwd'} variant {vi} {name}: {m['ms']:.3f} ms"
                  f"{spread} err {m['err']:.2e}", flush=True)
        row["ours_bwd_only"] = median_ms(lambda: ours.bwd(q, k, v, out, dout, dq, dk, dv))
    log.write(json.dumps(row) + "\n")
    log.flush()
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--seqs", default="1024,4096,8192,16384")
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--fwd-variants", default="", help="with --variants: only these forward variants (e.g. 4,8)")
    ap.add_argument("--bwd-variants", default="", help="with --variants: only these backward variants")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --variants: time the variants this many times, interleaved (median)")
    ap.add_argument("--out", default="bench_dense.jsonl")
    args = ap.parse_args()

    only = None
    if args.fwd_variants or args.bwd_variants:
        ids = lambda txt: {int(x) for x in txt.split(",") if x}
        only = {1: ids(args.fwd_variants), 0: ids(args.bwd_variants)}
    lib = ctypes.CDLL(args.lib)
    lib.flash_attn_backward_workspace_bytes.restype = ctypes.c_size_t
    lib.bench_variant_name.restype = ctypes.c_char_p
    vp = ctypes.c_void_p
    lib.bench_fwd_variant.argtypes = [ctypes.c_int, vp, vp, vp, vp, vp, vp, vp]
    lib.bench_bwd_variant.argtypes = [ctypes.c_int] + [vp] * 12
    lib.flash_attn_backward.argtypes = [vp] * 11 + [ctypes.c_int, vp]

    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} "
          f"cudnn {torch.backends.cudnn.version()}", flush=True)
    rows = []
    with open(args.out, "w") as log:
        for T in (int(s) for s in args.seqs.split(",")):
            rows.append(bench_one(lib, T, args.tokens, args.heads, args.dim, args.variants, log, only, args.rounds))
    for r in rows:
        for key in ("fwd_variants", "bwd_variants"):
            for name, m in r.get(key, {}).items():
                print(f"T={r['T']:>6} {key[:3]} {name:<26} {m['ms']:7.3f} ms  err {m['err']:.1e}")
        if "ours_bwd_only" in r:
            print(f"T={r['T']:>6} bwd api (atomic dQ) alone {r['ours_bwd_only']:7.3f} ms")
    print(f"\nD={args.dim} H={args.heads} B*T={args.tokens}  (ms, median; ratio = cuDNN time / ours)")
    print(f"{'T':>6} | {'cudnn':>6} {'flash':>6} {'ours':>6} {'ratio':>5} | "
          f"{'cudnn':>6} {'flash':>6} {'ours':>6} {'det':>6} {'ratio':>5} | err out/dq vs cudnn")
    for r in rows:
        print(f"{r['T']:>6} | {r['cudnn_fwd']:6.3f} {r['flash_fwd']:6.3f} {r['ours_fwd']:6.3f} "
              f"{r['cudnn_fwd'] / r['ours_fwd']:5.2f} | {r['cudnn_fb']:6.3f} {r['flash_fb']:6.3f} "
              f"{r['ours_fb']:6.3f} {r['ours_fb_det']:6.3f} {r['cudnn_fb'] / r['ours_fb']:5.2f} | "
              f"{r['err_vs_cudnn']['out']:.1e}/{r['err_vs_cudnn']['dq']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
