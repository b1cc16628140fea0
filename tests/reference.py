"""Pure-torch references: the oracles the kernels are tested against."""

from __future__ import annotations

import torch


def ref_paged_kv_append(key, value, k_cache, v_cache, slot_mapping):
    """Returns updated copies of the caches."""
    k_out, v_out = k_cache.clone(), v_cache.clone()
    nb, bs = k_cache.shape[:2]
    k_flat, v_flat = k_out.view(nb * bs, *k_cache.shape[2:]), v_out.view(nb * bs, *v_cache.shape[2:])
    for i, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            k_flat[slot] = key[i]
            v_flat[slot] = value[i]
    return k_out, v_out


def gather_kv(cache, block_table, seq_len):
    """[seq_len, num_kv_heads, head_dim]: a sequence's keys or values laid out contiguously."""
    bs = cache.shape[1]
    num = (seq_len + bs - 1) // bs
    return cache[block_table[:num].long()].reshape(-1, *cache.shape[2:])[:seq_len]


def ref_paged_attention(query, k_cache, v_cache, block_tables, seq_lens, cu_query_lens=None,
                        scale=None):
    """fp32 SDPA with an explicit causal mask on each sequence's gathered K/V."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    group = num_heads // k_cache.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    batch = seq_lens.shape[0]
    cu = (torch.arange(batch + 1) if cu_query_lens is None else cu_query_lens.cpu()).tolist()
    out = torch.empty(query.shape, dtype=torch.float32)
    for b in range(batch):
        seq_len = int(seq_lens[b])
        q = query[cu[b]:cu[b + 1]].float().cpu()
        q_len = q.shape[0]
        if q_len == 0:
            continue
        k = gather_kv(k_cache.cpu(), block_tables[b].cpu(), seq_len).float()
        v = gather_kv(v_cache.cpu(), block_tables[b].cpu(), seq_len).float()
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [heads, seq_len, head_dim]
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)
        pos = torch.arange(seq_len - q_len, seq_len)
        mask = torch.arange(seq_len)[None, :] <= pos[:, None]  # [q_len, seq_len]
        o = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k, v, attn_mask=mask, scale=scale)
        out[cu[b]:cu[b + 1]] = o.transpose(0, 1)
    return out


def ref_copy_blocks(k_caches, v_caches, src, dst):
    ks, vs = [c.clone() for c in k_caches], [c.clone() for c in v_caches]
    for s, d in zip(src.tolist(), dst.tolist()):
        for c in ks + vs:
            c[d] = c[s]
    return ks, vs
