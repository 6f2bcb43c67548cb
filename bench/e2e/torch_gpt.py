"""PyTorch reference trainer for the end-to-end comparison: the same GPT-2 small as the C/CUDA
trainer (12 layers, 12 heads, 768 wide, vocabulary 50257 padded to 50304 and excluded from the
softmax, no biases, tied LM head, GELU tanh), bf16 autocast, fused AdamW (decay on matrices
only), global-norm clipping at 1.0, attention through SDPA restricted to cuDNN.

Times zero_grad + forward + backward + clip + AdamW on random tokens, eager and/or
torch.compile, and prints one JSON line per (mode, seq, batch):
    python3 bench/e2e/torch_gpt.py --modes eager,compile --configs 8192x4,16384x2
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

VOCAB, PADDED_VOCAB = 50257, 50304


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(n_embd, bias=False)
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.ln2 = nn.LayerNorm(n_embd, bias=False)
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        # [B, T, H, D] -> [B, H, T, D], the layout SDPA takes
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, seq_len):
        super().__init__()
        self.wte = nn.Embedding(PADDED_VOCAB, n_embd)
        self.wpe = nn.Embedding(seq_len, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.lnf = nn.LayerNorm(n_embd, bias=False)
        std_resid = 0.02 / math.sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = std_resid if name.endswith(("proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.lnf(x), self.wte.weight)  # tied head
        # padded vocabulary rows are not part of the softmax
        return F.cross_entropy(logits[..., :VOCAB].reshape(-1, VOCAB).float(), targets.reshape(-1))


def bench(mode, seq, batch, steps, warmup, n_layer):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = GPT(n_layer, 12, 768, seq).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    fwd = torch.compile(model) if mode == "compile" else model
    idx = torch.randint(0, VOCAB, (batch, seq), device=dev)
    tgt = torch.randint(0, VOCAB, (batch, seq), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            loss = fwd(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    torch.cuda.reset_peak_memory_stats()
    t_compile = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t_compile = time.perf_counter() - t_compile
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    out = {"trainer": f"torch-{mode}", "seq": seq, "batch": batch, "layers": n_layer,
           "ms_per_step": round(ms, 2), "tokens_per_s": round(batch * seq / (ms * 1e-3)),
           "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
           "warmup_s": round(t_compile, 1), "loss": round(loss.item(), 4),
           "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    print(json.dumps(out), flush=True)
    del model, opt, fwd
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--configs", default="8192x4,16384x2", help="seqxbatch,...")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layers", type=int, default=12)
    a = ap.parse_args()
    for mode in a.modes.split(","):
        if mode not in ("eager", "compile"):
            raise SystemExit(f"--modes: unknown mode {mode!r} (eager, compile)")
        for cfg in a.configs.split(","):
            seq, batch = (int(x) for x in cfg.split("x"))
            bench(mode, seq, batch, a.steps, a.warmup, a.layers)


if __name__ == "__main__":
    main()
