"""Builds random paged KV caches with shuffled block tables for the kernel tests."""

from __future__ import annotations

import torch


def make_paged(seq_lens, num_kv_heads, head_dim, block_size, dtype, device, extra_blocks=3,
               seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [(n + block_size - 1) // block_size for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + extra_blocks
    max_blocks = max(blocks_per_seq) + 1
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(blocks_per_seq):
        tables[b, :n] = perm[used:used + n].to(torch.int32)
        used += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return k_cache.to(device), v_cache.to(device), tables.to(device), lens.to(device)


TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=1.5e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
