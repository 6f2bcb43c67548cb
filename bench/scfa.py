#!/usr/bin/env python3
"""Our sparse causal flash attention (libscfa, attention/api.h) from PyTorch, checked against a
float32 PyTorch reference and timed side by side with cuDNN SDPA and FlexAttention.

Usage (on the GPU machine; build the library first: bench/build_scfa.sh or `make libscfa`):
  python3 bench/scfa.py --lib carry/scfa/libscfa.so [--quick] [--seqs 1024,...,32768]
      [--nbs 2,4,8,16,32,64] [--drops 0.1,0.3,0.5,0.7,0.9] [--shapes tokens,paper]
      [--no-flex] [--no-check] [--deterministic] [--out scfa.json]

What is measured, per T, with the same inputs in one process (CUDA events, medians after
warm-up; "fwd" is the forward of a training step: inputs require grad, lse kept):
  - ours: ScfaAttention (plan build from the RNG key: hashing or keep masks, sort, tile lists,
    then the kernels); forward and forward+backward; plan alone; live-tile fraction.
  - cuDNN dense causal SDPA (sdpa_kernel(CUDNN_ATTENTION), is_causal=True).
  - FlexAttention (torch.compile(flex_attention)) with a mask_mod over the SAME buckets / keep
    masks as our plan (exported from the library), kernel only (block mask prebuilt) and with
    its torch.compile'd create_block_mask build in every call (needed every step in training:
    the buckets change). Flex gets no hashing cost: its groups are handed to it.
Shapes: "tokens" = B*T = --tokens (65536), --heads (12) heads; "paper" = B=4, 48 heads. D = 64.
Torch baselines get contiguous [B][H][T][D] copies of the inputs, ours [B][T][H][D].
Results go to --out (JSON, rewritten after every point); a short table comes last.
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ABI_VERSION = 1
MODES = {"dense": 0, "qk": 1, "hash": 2}
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


class ScfaError(RuntimeError):
    pass


class Library:
    """ctypes bindings of attention/api.h; every int-returning call is checked."""

    def __init__(self, path):
        if not os.path.isfile(path):
            raise SystemExit(f"error: libscfa not found at '{path}' (build it with `make libscfa` "
                             f"or bench/build_scfa.sh, or pass --lib)")
        lib = ctypes.CDLL(os.path.abspath(path))
        i, f, u64, i64, vp = ctypes.c_int, ctypes.c_float, ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p
        L, P = ctypes.c_long, ctypes.POINTER
        sig = {
            "scfa_abi_version": (i, []),
            "scfa_last_error": (ctypes.c_char_p, []),
            "scfa_rng_key": (u64, [u64, u64, u64, u64]),
            "scfa_create": (i, [P(vp), i, i, i, i, i, i, f, i, i]),
            "scfa_free": (None, [vp]),
            "scfa_build_plan": (i, [vp, u64, vp, L, vp, L, vp]),
            "scfa_forward": (i, [vp, vp, L, vp, L, vp, L, vp, L, vp, vp]),
            "scfa_backward": (i, [vp, vp, L, vp, L, vp, L, vp, L, vp, vp, vp, vp, vp, i, vp]),
            "scfa_tile_counts": (i, [vp, vp, P(i64), P(i64), P(i64), P(i), P(i)]),
            "scfa_export_plan": (i, [vp, vp, vp, vp, vp, vp]),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.lib = lib
        version = lib.scfa_abi_version()
        if version != ABI_VERSION:
            raise SystemExit(f"error: {path} has ABI version {version}, this script needs {ABI_VERSION}")

    def __getattr__(self, name):  # the C functions, e.g. self.scfa_create
        if name == "lib":
            raise AttributeError(name)
        return getattr(self.lib, name)

    def check(self, rc, what):
        if rc != 0:
            raise ScfaError(f"{what} failed ({rc}): {self.lib.scfa_last_error().decode()}")

    def rng_key(self, seed, step, layer, micro):
        return self.lib.scfa_rng_key(seed, step, layer, micro)


def _ptr(x):
    return ctypes.c_void_p(x.data_ptr()) if x is not None else None


class ScfaContext:
    """One plan for fixed sizes and mode (attention/api.h). mode: 'dense' | 'qk' | 'hash'."""

    def __init__(self, lib, B, T, H, D, mode, n_buckets=1, drop_prob=0.0, exclude_self=False,
                 shared_qk=False, device=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        self.lib, self.B, self.T, self.H, self.D = lib, B, T, H, D
        self.mode, self.n_buckets, self.drop_prob = mode, n_buckets, drop_prob
        self.exclude_self, self.shared_qk = bool(exclude_self), bool(shared_qk and mode == "hash")
        self.device = torch.device("cuda", torch.cuda.current_device() if device is None else device)
        self.builds = 0  # plans built so far: a backward checks that its forward's plan is current
        self.handle = ctypes.c_void_p()
        with torch.cuda.device(self.device):
            lib.check(lib.scfa_create(ctypes.byref(self.handle), B, T, H, D, MODES[mode], n_buckets,
                                      drop_prob, int(self.exclude_self), int(self.shared_qk)),
                      "scfa_create")

    def close(self):
        if self.handle:
            torch.cuda.synchronize(self.device)  # no queued work may still use the plan
            self.lib.scfa_free(self.handle)
            self.handle = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _stream(self):
        return ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)

    def layout(self, name, x):
        """Checks a [B][T][H][D] bf16 tensor on our device; returns it in a layout the kernels
        read (a copy if its rows are not evenly strided) and its row stride."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor")
        want = (self.B, self.T, self.H, self.D)
        if tuple(x.shape) != want or x.dtype != torch.bfloat16 or x.device != self.device:
            raise ValueError(f"{name}: expected bf16 {list(want)} on {self.device}, got "
                             f"{x.dtype} {list(x.shape)} on {x.device}")
        s = x.stride()
        if not (s[3] == 1 and s[2] == self.D and s[0] == self.T * s[1] and s[1] % 8 == 0
                and x.data_ptr() % 16 == 0):
            x = x.contiguous()
        return x, x.stride(1)

    def build_plan(self, key, q, k=None):
        q, qs = self.layout("q", q)
        k, ks = (None, 0) if k is None or self.shared_qk else self.layout("k", k)
        with torch.cuda.device(self.device):
            self.lib.check(self.lib.scfa_build_plan(self.handle, key, _ptr(q), qs, _ptr(k), ks,
                                                    self._stream()), "scfa_build_plan")
        self.builds += 1

    def forward(self, q, k, v):
        (q, qs), (k, ks), (v, vs) = self.layout("q", q), self.layout("k", k), self.layout("v", v)
        out = torch.empty(self.B, self.T, self.H, self.D, dtype=torch.bfloat16, device=self.device)
        lse = torch.empty(self.B, self.H, self.T, dtype=torch.float32, device=self.device)
        with torch.cuda.device(self.device):
            self.lib.check(self.lib.scfa_forward(self.handle, _ptr(q), qs, _ptr(k), ks, _ptr(v), vs,
                                                 _ptr(out), out.stride(1), _ptr(lse), self._stream()),
                           "scfa_forward")
        return out, lse

    def backward(self, q, k, v, out, lse, dout, deterministic=False):
        (q, qs), (k, ks), (v, vs) = self.layout("q", q), self.layout("k", k), self.layout("v", v)
        out, os_ = self.layout("out", out)
        dout, ds = self.layout("dout", dout)
        if ds != os_:  # the API reads dout with out's stride
            out, dout = out.contiguous(), dout.contiguous()
            os_ = out.stride(1)
        if lse.shape != (self.B, self.H, self.T) or lse.dtype != torch.float32 or not lse.is_contiguous():
            raise ValueError(f"lse: expected contiguous float32 [{self.B}, {self.H}, {self.T}]")
        dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
        with torch.cuda.device(self.device):
            self.lib.check(self.lib.scfa_backward(
                self.handle, _ptr(q), qs, _ptr(k), ks, _ptr(v), vs, _ptr(out), os_, _ptr(lse),
                _ptr(dout), _ptr(dq), _ptr(dk), _ptr(dv), int(deterministic), self._stream()),
                "scfa_backward")
        return dq, dk, dv

    def tile_counts(self):
        """Forward tiles of the last plan (synchronises the stream)."""
        live, causal, total = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
        bm, bn = ctypes.c_int(), ctypes.c_int()
        with torch.cuda.device(self.device):
            self.lib.check(self.lib.scfa_tile_counts(self.handle, self._stream(), ctypes.byref(live),
                                                     ctypes.byref(causal), ctypes.byref(total),
                                                     ctypes.byref(bm), ctypes.byref(bn)),
                           "scfa_tile_counts")
        return {"live_tiles": live.value, "causal_tiles": causal.value, "total_tiles": total.value,
                "live_frac": live.value / causal.value if causal.value else 0.0,
                "tile": [bm.value, bn.value]}

    def groups(self):
        """The last plan as int32 [B][H][T] groups (gq, gk): query i and key j of (b, h) may
        interact iff gq[b,h,i] == gk[b,h,j] (and causality). hash: the buckets; qk: 0 for kept
        rows, -1 / -2 for dropped queries / keys; dense: all zeros."""
        shape = (self.B, self.H, self.T)
        dev = self.device
        if self.mode == "dense":
            return (torch.zeros(shape, dtype=torch.int32, device=dev),) * 2
        with torch.cuda.device(self.device):
            if self.mode == "hash":
                gq, gk = (torch.empty(shape, dtype=torch.int32, device=dev) for _ in range(2))
                self.lib.check(self.lib.scfa_export_plan(self.handle, _ptr(gq), _ptr(gk), None, None,
                                                         self._stream()), "scfa_export_plan")
                return gq, gk
            kq, kk = (torch.empty(shape, dtype=torch.uint8, device=dev) for _ in range(2))
            self.lib.check(self.lib.scfa_export_plan(self.handle, None, None, _ptr(kq), _ptr(kk),
                                                     self._stream()), "scfa_export_plan")
        zero = torch.zeros((), dtype=torch.int32, device=dev)
        return (torch.where(kq != 0, zero, zero - 1), torch.where(kk != 0, zero, zero - 2))


class ScfaAttention(torch.autograd.Function):
    """out = attention(q, k, v) under the plan of RNG key `key`, built in the forward.
    q, k, v: bf16 [B][T][H][D]. The backward reuses the plan, or rebuilds it (same key, same
    q and k) when the context built another plan meanwhile (e.g. a second layer)."""

    @staticmethod
    def forward(fctx, q, k, v, scfa, key, deterministic=False):
        q, _ = scfa.layout("q", q)
        k, _ = scfa.layout("k", k)
        v, _ = scfa.layout("v", v)
        scfa.build_plan(key, q, k)
        out, lse = scfa.forward(q, k, v)
        fctx.save_for_backward(q, k, v, out, lse)
        fctx.scfa, fctx.key, fctx.deterministic, fctx.build = scfa, key, deterministic, scfa.builds
        return out

    @staticmethod
    def backward(fctx, dout):
        q, k, v, out, lse = fctx.saved_tensors
        scfa = fctx.scfa
        if scfa.builds != fctx.build:
            scfa.build_plan(fctx.key, q, k)
        dq, dk, dv = scfa.backward(q, k, v, out, lse, dout, fctx.deterministic)
        return dq, dk, dv, None, None, None


def scfa_attention(q, k, v, scfa, key, deterministic=False):
    return ScfaAttention.apply(q, k, v, scfa, key, deterministic)


# ---------------------------------------------------------------- correctness

def reference(q, k, v, gq, gk, exclude_self):
    """float32 attention over [B][T][H][D] inputs with mask gq[i] == gk[j] && causal; rows with
    no allowed key give zeros and lse = -inf. Returns out [B][T][H][D], lse [B][H][T]."""
    B, T, H, D = q.shape
    qh, kh, vh = (x.permute(0, 2, 1, 3) for x in (q, k, v))
    i = torch.arange(T, device=q.device)
    causal = i[None, :] < i[:, None] if exclude_self else i[None, :] <= i[:, None]
    allowed = (gq[..., :, None] == gk[..., None, :]) & causal
    s = (qh @ kh.transpose(-1, -2)) / math.sqrt(D)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    den = p.sum(-1, keepdim=True)
    out = (p @ vh) / torch.where(den > 0, den, torch.ones_like(den))
    lse = (torch.log(den) + m).squeeze(-1)
    return out.permute(0, 2, 1, 3), lse


def rel_l2(a, b):
    a, b = a.float(), b.float()
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def check_case(lib, case, tol=1e-2):
    """One awkward shape: our forward / both backwards against the float32 reference on the
    same plan; also the plan rebuild of ScfaAttention's backward. Returns a result dict."""
    B, T, H, D = case["B"], case["T"], case["H"], 64
    gen = torch.Generator(device="cuda").manual_seed(1000 + T)
    q, k, v, dout = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                     for _ in range(4))
    key = lib.rng_key(7, T, H, B)
    res = dict(case)
    with ScfaContext(lib, B, T, H, D, case["mode"], case.get("nb", 1), case.get("drop", 0.0),
                     case["excl"], case.get("shared", False)) as ctx:
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        out = scfa_attention(qg, kg, vg, ctx, key)
        gq, gk = ctx.groups()
        # Another plan in between: the backward must rebuild the forward's plan.
        ctx.build_plan((key + 1) % 2**64, q, k)
        dq, dk, dv = torch.autograd.grad(out, (qg, kg, vg), dout)
        ctx.build_plan(key, q, k)
        out2, lse = ctx.forward(q, k, v)
        det = ctx.backward(q, k, v, out2, lse, dout, deterministic=True)
        torch.cuda.synchronize()
    rq, rk, rv = (x.float().requires_grad_() for x in (q, k, v))
    rout, rlse = reference(rq, rk, rv, gq, gk, case["excl"])
    rdq, rdk, rdv = torch.autograd.grad(rout, (rq, rk, rv), dout.float())
    empty = torch.isinf(rlse)  # [B][H][T]: queries with no allowed key
    errs = {"out": rel_l2(out, rout), "dq": rel_l2(dq, rdq), "dk": rel_l2(dk, rdk), "dv": rel_l2(dv, rdv),
            "out_det": rel_l2(out2, rout), "dq_det": rel_l2(det[0], rdq), "dk_det": rel_l2(det[1], rdk),
            "dv_det": rel_l2(det[2], rdv)}
    finite = ~empty
    lse_err = (lse[finite] - rlse[finite]).abs().max().item() if finite.any() else 0.0
    lse_bad = int((torch.isinf(lse) & (lse < 0) != empty).sum().item())
    empty_rows = empty.permute(0, 2, 1)  # [B][T][H]
    nonzero_empty = sum(int((x.float().abs().sum(-1)[empty_rows] != 0).sum().item())
                        for x in (out, dq, out2, det[0]))
    nan = sum(int(torch.isnan(x.float()).sum().item()) for x in (out, dq, dk, dv, out2, lse, *det))
    # The plan itself (equal to the CPU plan: tests/gpu/test_plan_cuda) only for plausibility:
    # every bucket in range and used; a kept fraction near 1 - drop.
    if case["mode"] == "hash":
        plan_ok = (int(gq.min()) >= 0 and int(gq.max()) < case["nb"] and int(gk.min()) >= 0
                   and int(gk.max()) < case["nb"] and gq.unique().numel() == case["nb"])
    elif case["mode"] == "qk":
        kept = ((gq == 0).float().mean().item() + (gk == 0).float().mean().item()) / 2
        plan_ok = abs(kept - (1 - case["drop"])) < 0.05
    else:
        plan_ok = True
    res.update(errs=errs, lse_err=lse_err, lse_bad=lse_bad, empty_queries=int(empty.sum().item()),
               nonzero_empty_rows=nonzero_empty, nan=nan, plan_ok=plan_ok)
    res["ok"] = (all(e <= tol for e in errs.values()) and lse_err <= tol and lse_bad == 0
                 and nonzero_empty == 0 and nan == 0 and plan_ok)
    return res


CHECK_CASES = [
    {"mode": "hash", "nb": 8, "B": 2, "T": 300, "H": 3, "excl": False},
    {"mode": "hash", "nb": 16, "B": 1, "T": 577, "H": 2, "excl": True, "shared": True},
    {"mode": "hash", "nb": 64, "B": 1, "T": 1000, "H": 2, "excl": False},
    {"mode": "qk", "drop": 0.5, "B": 2, "T": 300, "H": 3, "excl": False},
    {"mode": "qk", "drop": 0.7, "B": 1, "T": 1000, "H": 2, "excl": True},
    {"mode": "dense", "B": 1, "T": 577, "H": 2, "excl": True},
]


def run_checks(lib):
    results = []
    for case in CHECK_CASES:
        try:
            r = check_case(lib, case)
        except (ScfaError, ValueError, RuntimeError) as e:
            r = dict(case, ok=False, error=str(e))
        results.append(r)
        desc = " ".join(f"{k}={v}" for k, v in case.items())
        if "error" in r:
            log(f"check FAIL {desc}: {r['error']}")
        else:
            e = r["errs"]
            log(f"check {'ok  ' if r['ok'] else 'FAIL'} {desc}: out {e['out']:.1e} dq {e['dq']:.1e} "
                f"dk {e['dk']:.1e} dv {e['dv']:.1e} (det {e['dq_det']:.1e}/{e['dk_det']:.1e}/"
                f"{e['dv_det']:.1e}) lse {r['lse_err']:.1e} empty q {r['empty_queries']} "
                f"bad: lse {r['lse_bad']} rows {r['nonzero_empty_rows']} nan {r['nan']} "
                f"plan {'ok' if r['plan_ok'] else 'IMPLAUSIBLE'}")
    return results


# ---------------------------------------------------------------- benchmark

# GPU cycles of the spin kernel queued ahead of each timed call (~1 ms at H100 clocks): the host
# then enqueues the call's launches (Python, ctypes, PyTorch's dispatch: 0.1-0.2 ms) while the
# GPU still spins, so the events time the GPU's work, not the host's launch latency. Before
# session 12 the timer had no lead: a call's host overhead was in its time (ours and the
# baselines' alike), e.g. qk 0.5 fwd+bwd 4.354 ms in scfa.py against 4.172 in the C test.
LEAD_CYCLES = 2_000_000


def median_ms(fn, warmup=5, reps=30):
    """Median of `reps` CUDA-event-timed calls of fn after `warmup` untimed ones, in ms; each
    timed call is enqueued behind a spin kernel (LEAD_CYCLES) so that host launch latency is
    not timed."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(LEAD_CYCLES)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def flex_setup():
    """Compiled flex_attention and create_block_mask (eager create_block_mask materialises the
    whole B*H*T*T mask). Recompile limits are raised: every T compiles once per function."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    cfg = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 256))
    return (torch.compile(flex_attention, dynamic=False),
            torch.compile(create_block_mask, dynamic=False))


def add_speedups(row, dense):
    """speedup_{fwd,fb}_vs_{cudnn,flex,flex_mask} = baseline time / our time, where measured."""
    for ref, name in ((dense, "cudnn"), (row, "flex"), (row, "flex_mask")):
        for pas in ("fwd", "fb"):
            t_ref = ref.get(f"{pas}_ms" if name == "cudnn" else f"{name}_{pas}_ms")
            if t_ref and row.get(f"ours_{pas}_ms"):
                row[f"speedup_{pas}_vs_{name}"] = t_ref / row[f"ours_{pas}_ms"]


def make_mask_mod(gq, gk):
    """Query i, key j of (b, h) interact iff their groups match and j <= i (attention.h)."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (gq[b, h, q_idx] == gk[b, h, kv_idx]) & (kv_idx <= q_idx)
    return mask_mod


class Bench:
    def __init__(self, lib, args):
        self.lib, self.args = lib, args
        self.flex = None if args.no_flex else flex_setup()
        self.doc = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "args": vars(args), "timing": "CUDA events, median of reps after warm-up",
                    "flex_mask_build": "torch.compile(create_block_mask), BLOCK_SIZE 128",
                    "checks": [], "rows": [], "errors": []}

    def save(self):
        tmp = self.args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1)
        os.replace(tmp, self.args.out)

    def measure(self, row, name, fn):
        """row[name] = median ms of fn(); a failure is recorded, printed and skipped."""
        try:
            row[name] = median_ms(fn, self.args.warmup, self.args.reps)
        except Exception as e:  # a failing baseline must not cost the rest of the run
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            row[name + "_error"] = msg
            self.doc["errors"].append(f"T={row['T']} {row['kind']} {name}: {msg}")
            log(f"  {name} FAILED: {msg}")
            torch.cuda.synchronize()

    def point(self, shape, B, T, H):
        D, args = 64, self.args
        gen = torch.Generator(device="cuda").manual_seed(T)
        q, k, v, dout = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                         for _ in range(4))
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        tqg, tkg, tvg, tdout = (x.transpose(1, 2).contiguous() for x in (q, k, v, dout))
        tqg, tkg, tvg = (x.requires_grad_() for x in (tqg, tkg, tvg))
        base = {"shape": shape, "T": T, "B": B, "H": H, "D": D}

        from torch.nn.attention import SDPBackend, sdpa_kernel

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(tqg, tkg, tvg, is_causal=True)

        row = dict(base, kind="cudnn")
        self.measure(row, "fwd_ms", cudnn)
        self.measure(row, "fb_ms", lambda: torch.autograd.grad(cudnn(), (tqg, tkg, tvg), tdout))
        dense = row
        self.doc["rows"].append(row)
        self.save()
        nan = float("nan")
        log(f"{shape} T={T} B={B} H={H} cudnn fwd {row.get('fwd_ms', nan):.3f} "
            f"fwd+bwd {row.get('fb_ms', nan):.3f} ms")

        # Ours for every configuration first, then Flex (whose compiles take the longest), so
        # that a run cut short still has ours and cuDNN for every point.
        configs = ([("dense", None)] if args.with_dense else []) + [("hash", nb) for nb in args.nbs] + \
            [("qk", p) for p in args.drops]
        pending = []  # (row, our output, groups) for the Flex phase
        for index, (kind, param) in enumerate(configs):
            row = dict(base, kind=kind, **({"nb": param} if kind == "hash" else {"drop": param} if kind == "qk" else {}))
            self.doc["rows"].append(row)
            key = self.lib.rng_key(1234, T, index, 0)
            try:
                ctx = ScfaContext(self.lib, B, T, H, D, kind, n_buckets=param if kind == "hash" else 1,
                                  drop_prob=param if kind == "qk" else 0.0, shared_qk=args.shared_qk)
                with ctx:
                    ctx.build_plan(key, q, k)
                    row.update(ctx.tile_counts())
                    self.measure(row, "plan_ms", lambda: ctx.build_plan(key, q, k))
                    self.measure(row, "ours_fwd_ms", lambda: scfa_attention(qg, kg, vg, ctx, key, args.deterministic))
                    self.measure(row, "ours_fb_ms", lambda: torch.autograd.grad(
                        scfa_attention(qg, kg, vg, ctx, key, args.deterministic), (qg, kg, vg), dout))
                    if self.flex and kind != "dense":
                        with torch.no_grad():
                            ours = scfa_attention(q, k, v, ctx, key)
                        pending.append((row, ours, ctx.groups()))
            except (ScfaError, ValueError) as e:
                row["error"] = str(e)
                self.doc["errors"].append(f"T={T} {kind} {param}: {e}")
                log(f"  {kind} {param}: {e}")
                continue
            add_speedups(row, dense)
            self.save()
            log(f"  {kind} {param}: live {row['live_frac']:.3f} of causal tiles; ours plan "
                f"{row.get('plan_ms', nan):.3f} fwd {row.get('ours_fwd_ms', nan):.3f} fwd+bwd "
                f"{row.get('ours_fb_ms', nan):.3f} ms = {row.get('speedup_fb_vs_cudnn', nan):.2f}x cuDNN")
        if self.flex:
            gq_buf, gk_buf = (torch.zeros(B, H, T, dtype=torch.int32, device="cuda") for _ in range(2))
            mask_mod = make_mask_mod(gq_buf, gk_buf)  # one function per T: one compile per T
            for row, ours, (gq, gk) in pending:
                gq_buf.copy_(gq)
                gk_buf.copy_(gk)
                self.flex_point(row, ours, mask_mod, (tqg, tkg, tvg), tdout)
                add_speedups(row, dense)
                self.save()
                log(f"  {row['kind']} {row.get('nb', row.get('drop'))}: flex fwd+bwd "
                    f"{row.get('flex_fb_ms', nan):.3f} ms, with mask build {row.get('flex_mask_fb_ms', nan):.3f}"
                    f" ms; ours {row.get('speedup_fb_vs_flex', nan):.2f}x / "
                    f"{row.get('speedup_fb_vs_flex_mask', nan):.2f}x faster; out vs flex "
                    f"{row.get('err_vs_flex', nan):.1e}")

    def flex_point(self, row, ours, mask_mod, leaves, tdout):
        flex, cbm = self.flex
        B, H, T = row["B"], row["H"], row["T"]
        try:
            t = time.time()
            bm = cbm(mask_mod, B, H, T, T, device="cuda")
            out = flex(*leaves, block_mask=bm).detach()  # the graph the timed calls compile
            torch.cuda.synchronize()
            row["err_vs_flex"] = rel_l2(ours.transpose(1, 2), out)
            log(f"  flex ready ({time.time() - t:.1f} s incl. any compile)")
        except Exception as e:
            msg = f"{type(e).__name__}: {str(e).strip()[:300]}"
            row["flex_error"] = msg
            self.doc["errors"].append(f"T={T} {row['kind']} flex: {msg}")
            log(f"  flex FAILED: {msg}")
            return

        def fwd(block_mask):
            return flex(*leaves, block_mask=block_mask)

        self.measure(row, "flex_fwd_ms", lambda: fwd(bm))
        self.measure(row, "flex_fb_ms", lambda: torch.autograd.grad(fwd(bm), leaves, tdout))
        build = lambda: cbm(mask_mod, B, H, T, T, device="cuda")  # noqa: E731
        self.measure(row, "flex_mask_ms", build)
        self.measure(row, "flex_mask_fwd_ms", lambda: fwd(build()))
        self.measure(row, "flex_mask_fb_ms", lambda: torch.autograd.grad(fwd(build()), leaves, tdout))


def print_table(rows):
    print("\nms, median; x = time of the baseline / ours (fwd+bwd unless marked fwd); live = live "
          "tiles / dense causal tiles; flex = kernel with prebuilt block mask, +mask = with its build")
    print(f"{'shape':>6} {'T':>6} {'mode':>9} {'live':>5} | {'plan':>6} {'fwd':>6} {'f+b':>7} | "
          f"{'cuDNN':>7} {'x':>5} {'x fwd':>5} | {'flex':>7} {'x':>5} | {'+mask':>7} {'x':>5}")
    nan = float("nan")
    dense = {}
    for r in rows:
        if r["kind"] == "cudnn":
            dense[(r["shape"], r["T"])] = r
            continue
        d = dense.get((r["shape"], r["T"]), {})
        mode = f"hash {r['nb']}" if r["kind"] == "hash" else f"qk {r['drop']}" if r["kind"] == "qk" else "ours dense"
        g = lambda key: r.get(key, nan)  # noqa: E731
        print(f"{r['shape']:>6} {r['T']:>6} {mode:>9} {g('live_frac'):5.3f} | {g('plan_ms'):6.3f} "
              f"{g('ours_fwd_ms'):6.3f} {g('ours_fb_ms'):7.3f} | {d.get('fb_ms', nan):7.3f} "
              f"{g('speedup_fb_vs_cudnn'):5.2f} {g('speedup_fwd_vs_cudnn'):5.2f} | "
              f"{g('flex_fb_ms'):7.3f} {g('speedup_fb_vs_flex'):5.2f} | {g('flex_mask_fb_ms'):7.3f} "
              f"{g('speedup_fb_vs_flex_mask'):5.2f}")


def parse_list(text, kind):
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: cannot parse '{text}' as a comma-separated list of {kind.__name__}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build/libscfa.so")
    ap.add_argument("--quick", action="store_true",
                    help="T=16384, hash nb=16, qk 0.5, fewer repetitions (unless set explicitly)")
    ap.add_argument("--seqs", help="default 1024,2048,4096,8192,16384,32768")
    ap.add_argument("--nbs", help="hash bucket counts, default 2,4,8,16,32,64")
    ap.add_argument("--drops", help="qk drop rates, default 0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--shapes", default="tokens", help="tokens (B*T=--tokens, --heads) and/or paper (B=4, H=48)")
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--deterministic", action="store_true", help="our deterministic backward")
    ap.add_argument("--with-dense", action="store_true", help="also time our dense kernels (plan-free)")
    ap.add_argument("--shared-qk", action="store_true", help="hash: keys take the queries' buckets")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--reps", type=int)
    ap.add_argument("--out", default="scfa.json")
    args = ap.parse_args()
    quick = args.quick
    args.seqs = parse_list(args.seqs or ("16384" if quick else "1024,2048,4096,8192,16384,32768"), int)
    args.nbs = parse_list(args.nbs or ("16" if quick else "2,4,8,16,32,64"), int)
    args.drops = parse_list(args.drops or ("0.5" if quick else "0.1,0.3,0.5,0.7,0.9"), float)
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 3)
    args.reps = args.reps if args.reps is not None else (10 if quick else 20)
    shapes = parse_list(args.shapes, str)
    if any(s not in ("tokens", "paper") for s in shapes):
        raise SystemExit(f"error: --shapes takes tokens and/or paper, got '{args.shapes}'")
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device visible to PyTorch")

    lib = Library(args.lib)
    bench = Bench(lib, args)
    log(f"{bench.doc['device']} torch {torch.__version__} cuda {torch.version.cuda} "
        f"cudnn {bench.doc['cudnn']}")
    failed = 0
    if not args.no_check:
        bench.doc["checks"] = run_checks(lib)
        failed = sum(not r["ok"] for r in bench.doc["checks"])
        bench.save()
    if not args.check_only:
        for shape in shapes:
            for T in args.seqs:
                B, H = (max(1, args.tokens // T), args.heads) if shape == "tokens" else (4, 48)
                bench.point(shape, B, T, H)
                torch.cuda.empty_cache()
        print_table(bench.doc["rows"])
    bench.save()
    if failed:
        print(f"\n{failed} correctness check(s) FAILED (see above)")
    if bench.doc["errors"]:
        print(f"\n{len(bench.doc['errors'])} measurement error(s):\n  " + "\n  ".join(bench.doc["errors"]))
    log(f"results in {args.out}")
    return 1 if failed or bench.doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
