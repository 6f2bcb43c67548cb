#!/usr/bin/env python3
"""Writes small synthetic token shards (llm.c layout: 256 x int32 header with magic 20240520,
version 1, token count; then uint16 tokens) for tests that must not depend on a download.
Tokens follow a fixed random Markov chain over 300 ids so that a model can learn them.
usage: make_shards.py OUTDIR [VOCAB]   (token ids < VOCAB, default 50257)"""
import os
import random
import struct
import sys


def write_shard(path, tokens):
    header = [0] * 256
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack(f"<{len(tokens)}H", *tokens))


def main():
    out = sys.argv[1]
    vocab = int(sys.argv[2]) if len(sys.argv) > 2 else 50257
    os.makedirs(out, exist_ok=True)
    rng = random.Random(1234)
    ids = [rng.randrange(vocab) for _ in range(300)]
    nxt = [[rng.randrange(300) for _ in range(3)] for _ in range(300)]
    state = 0

    def tokens(n):
        nonlocal state
        t = []
        for _ in range(n):
            state = rng.choice(nxt[state])
            t.append(ids[state])
        return t

    write_shard(f"{out}/train_000.bin", tokens(20000))
    write_shard(f"{out}/train_001.bin", tokens(15000))
    write_shard(f"{out}/val_000.bin", tokens(6000))
    print(f"wrote shards to {out}")


if __name__ == "__main__":
    main()
