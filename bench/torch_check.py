#!/usr/bin/env python3
"""Independent check of our GPT's loss and gradients with a PyTorch GPT written from the paper's
definitions (plain torch ops, float64, nothing shared with the C code).

For each dump directory written by `./train --config ... --dump DIR` it reads
  DIR/dump_params.bin  parameters (our checkpoint format, docs/FORMATS.md)
  DIR/dump.bin         the batch, our loss and gradients, and every layer's attention plan
rebuilds the model, applies the same buckets / keep masks, and reports the largest relative
difference of the loss and of every gradient tensor. Exit status 1 if any exceeds --tol.

usage: python3 bench/torch_check.py [--tol 1e-3] DIR [DIR ...]
"""
import argparse
import json
import math
import struct
import sys
import zlib

import numpy as np
import torch


def read_checkpoint(path):
    raw = open(path, "rb").read()
    if raw[:8] != b"SCFACKPT" or raw[-8:] != b"SCFAEND\0":
        sys.exit(f"{path}: not a checkpoint")
    (crc,) = struct.unpack_from("<Q", raw, len(raw) - 16)
    if zlib.crc32(raw[:-16]) != crc:
        sys.exit(f"{path}: CRC mismatch")
    step, tokens, n_params, world = struct.unpack_from("<4Q", raw, 16)
    (config_len,) = struct.unpack_from("<Q", raw, 112)
    config = json.loads(raw[120:120 + config_len])
    params = np.frombuffer(raw, dtype="<f4", count=n_params, offset=120 + config_len)
    return config, params


def read_dump(path):
    raw = open(path, "rb").read()
    if raw[:8] != b"SCFADUMP":
        sys.exit(f"{path}: not a dump")
    off = 16
    step, micro = struct.unpack_from("<2Q", raw, off)
    off += 16
    B, T, L, H = struct.unpack_from("<4I", raw, off)
    off += 16
    (config_len,) = struct.unpack_from("<Q", raw, off)
    off += 8
    config = json.loads(raw[off:off + config_len])
    off += config_len
    inputs = np.frombuffer(raw, "<i4", B * T, off).reshape(B, T)
    off += 4 * B * T
    targets = np.frombuffer(raw, "<i4", B * T, off).reshape(B, T)
    off += 4 * B * T
    (loss,) = struct.unpack_from("<f", raw, off)
    off += 4
    return raw, off, dict(B=B, T=T, L=L, H=H, config=config, inputs=inputs, targets=targets, loss=loss)


def tensor_table(m):
    """Names and shapes in our parameter order (model/gpt.h)."""
    C, L, Vp, maxT, bias = m["n_embd"], m["n_layer"], m["padded_vocab"], m["seq_len"], m["bias"]
    P = 2 * C if m["shared_qk"] else 3 * C
    t = [("wte", (Vp, C)), ("wpe", (maxT, C))]
    for l in range(L):
        h = f"h.{l}."
        layer = [("ln1.w", (C,)), ("ln1.b", (C,)), ("attn.qkv.w", (P, C)), ("attn.qkv.b", (P,)),
                 ("attn.proj.w", (C, C)), ("attn.proj.b", (C,)), ("ln2.w", (C,)), ("ln2.b", (C,)),
                 ("mlp.fc.w", (4 * C, C)), ("mlp.fc.b", (4 * C,)), ("mlp.proj.w", (C, 4 * C)),
                 ("mlp.proj.b", (C,))]
        t += [(h + n, s) for n, s in layer if bias or not n.endswith(".b")]
    t += [("lnf.w", (C,))] + ([("lnf.b", (C,))] if bias else [])
    return t


def unflatten(flat, table, device):
    out, off = {}, 0
    for name, shape in table:
        n = math.prod(shape)
        out[name] = torch.tensor(flat[off:off + n].astype(np.float64).reshape(shape), device=device,
                                 requires_grad=True)
        off += n
    assert off == len(flat), f"parameter count {len(flat)} != table {off}"
    return out


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + 1e-5) * w
    return y + b if b is not None else y


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def attention(q, k, v, allowed):
    """q, k, v: [B, H, T, D]; allowed: bool [B, H, T, T]. Rows with no allowed key give zeros."""
    D = q.shape[-1]
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    any_key = allowed.any(-1, keepdim=True)
    s = torch.where(allowed, s, torch.full_like(s, -math.inf))
    s = torch.where(any_key, s, torch.zeros_like(s))  # empty rows: finite, then zeroed below
    p = torch.softmax(s, dim=-1) * allowed
    return p @ v


def allowed_mask(plan, B, H, T, exclude_self, device):
    i = torch.arange(T, device=device)
    causal = (i[None, :] < i[:, None]) if exclude_self else (i[None, :] <= i[:, None])
    mask = causal.expand(B, H, T, T)
    if plan[0] == "qk":
        kq, kk = plan[1], plan[2]
        mask = mask & kq[..., :, None] & kk[..., None, :]
    elif plan[0] == "hash":
        bq, bk = plan[1], plan[2]
        mask = mask & (bq[..., :, None] == bk[..., None, :])
    return mask


def forward(P, d, plans, device):
    m, a = d["config"]["model"], d["config"]["attention"]
    B, T, L, H = d["B"], d["T"], d["L"], d["H"]
    C = m["n_embd"]
    D = C // H
    bias = m["bias"]
    get = lambda n: P.get(n) if bias or not n.endswith(".b") else None
    idx = torch.tensor(d["inputs"], dtype=torch.long, device=device)
    x = P["wte"][idx] + P["wpe"][:T][None]
    for l in range(L):
        h = f"h.{l}."
        y = layer_norm(x, P[h + "ln1.w"], get(h + "ln1.b"))
        qkv = y @ P[h + "attn.qkv.w"].T
        if bias:
            qkv = qkv + P[h + "attn.qkv.b"]
        heads = lambda t: t.reshape(B, T, H, D).transpose(1, 2)
        if a["shared_qk"]:
            q, v = heads(qkv[..., :C]), heads(qkv[..., C:])
            k = q / q.norm(dim=-1, keepdim=True)
        else:
            q, k, v = heads(qkv[..., :C]), heads(qkv[..., C:2 * C]), heads(qkv[..., 2 * C:])
        dense_layer = l in a["dense_layers"]
        plan = ("dense",) if dense_layer else plans[l]
        mask = allowed_mask(plan, B, H, T, a["exclude_self"], device)
        o = attention(q, k, v, mask).transpose(1, 2).reshape(B, T, C)
        o = o @ P[h + "attn.proj.w"].T
        if bias:
            o = o + P[h + "attn.proj.b"]
        x = x + o
        y = layer_norm(x, P[h + "ln2.w"], get(h + "ln2.b"))
        f = y @ P[h + "mlp.fc.w"].T
        if bias:
            f = f + P[h + "mlp.fc.b"]
        f = gelu_tanh(f) @ P[h + "mlp.proj.w"].T
        if bias:
            f = f + P[h + "mlp.proj.b"]
        x = x + f
    x = layer_norm(x, P["lnf.w"], get("lnf.b"))
    logits = x @ P["wte"][: m["vocab_size"]].T  # padded rows are not part of the softmax
    tgt = torch.tensor(d["targets"], dtype=torch.long, device=device)
    return torch.nn.functional.cross_entropy(logits.reshape(B * T, -1), tgt.reshape(-1))


def check(dirpath, tol, device):
    _, flat = read_checkpoint(f"{dirpath}/dump_params.bin")
    raw, off, d = read_dump(f"{dirpath}/dump.bin")
    m = dict(d["config"]["model"], shared_qk=d["config"]["attention"]["shared_qk"])
    table = tensor_table(m)
    n = sum(math.prod(s) for _, s in table)
    ours = np.frombuffer(raw, "<f4", n, off)
    off += 4 * n
    B, T, H = d["B"], d["T"], d["H"]
    rows = B * H * T
    plans = []
    for _ in range(d["L"]):
        (mode,) = struct.unpack_from("<I", raw, off)
        off += 4
        if mode == 1:
            kq = np.frombuffer(raw, "u1", rows, off).reshape(B, H, T)
            kk = np.frombuffer(raw, "u1", rows, off + rows).reshape(B, H, T)
            off += 2 * rows
            plans.append(("qk", torch.tensor(kq != 0, device=device), torch.tensor(kk != 0, device=device)))
        elif mode == 2:
            bq = np.frombuffer(raw, "<i4", rows, off).reshape(B, H, T)
            bk = np.frombuffer(raw, "<i4", rows, off + 4 * rows).reshape(B, H, T)
            off += 8 * rows
            plans.append(("hash", torch.tensor(bq, device=device), torch.tensor(bk, device=device)))
        else:
            plans.append(("dense",))
    assert off == len(raw), "dump has trailing bytes"

    P = unflatten(flat, table, device)
    loss = forward(P, d, plans, device)
    loss.backward()
    a = d["config"]["attention"]
    label = f"{a['mode']}" + (f" nb={a['n_buckets']}" if a["mode"] == "hash_sparse" else "") + \
        (f" drop={a['drop_prob']}" if a["mode"] == "qk_sparse" else "") + \
        (" shared_qk" if a["shared_qk"] else "") + (" exclude_self" if a["exclude_self"] else "")
    loss_rel = abs(loss.item() - d["loss"]) / abs(loss.item())
    worst, worst_name, goff = 0.0, "", 0
    for name, shape in table:
        k = math.prod(shape)
        g_ours = torch.tensor(ours[goff:goff + k].astype(np.float64).reshape(shape), device=device)
        g_ref = P[name].grad
        goff += k
        denom = g_ref.norm().item()
        rel = (g_ours - g_ref).norm().item() / denom if denom > 0 else g_ours.norm().item()
        if rel > worst:
            worst, worst_name = rel, name
    ok = loss_rel <= tol and worst <= tol
    print(f"{label:45s} loss ours {d['loss']:.6f} torch {loss.item():.6f} rel {loss_rel:.2e} | "
          f"max grad rel L2 diff {worst:.2e} ({worst_name}) | {'OK' if ok else 'FAIL'}")
    return ok, loss_rel, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__} on {device}, float64 reference; tolerance {args.tol:g}")
    results = [check(dp, args.tol, device) for dp in args.dirs]
    print(f"largest relative difference: loss {max(r[1] for r in results):.2e}, "
          f"gradients {max(r[2] for r in results):.2e}")
    n_ok = sum(r[0] for r in results)
    print(f"{n_ok} passed, {len(results) - n_ok} failed")
    sys.exit(0 if n_ok == len(results) else 1)


if __name__ == "__main__":
    main()
