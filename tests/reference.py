"""Pure-torch references: the oracles the kernels are tested against."""

from __future__ import annotations

import torch


def ref_paged_kv_append(key, value, k_cache, v_cache, slot_mapping):
    """Returns updated copies of the caches."""
    k_out, v_out = k_cache.clone(), v_cache.clone()
    nb, bs = k_cache.shape[:2]
    k_flat = k_out.view(nb * bs, *k_cache.shape[2:])
    v_flat = v_out.view(nb * bs, *v_cache.shape[2:])
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
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        for c in ks + vs:
            c[d] = c[s]
    return ks, vs


_PHILOX_MUL = (0xD2511F53, 0xCD9E8D57)
_PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_MASK32 = 0xFFFFFFFF


def ref_philox4x32_10(counter, key):
    """Philox4x32-10 on Python ints, written from Salmon et al. (SC'11) / Random123."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = _PHILOX_MUL[0] * c0, _PHILOX_MUL[1] * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK32
        k0, k1 = (k0 + _PHILOX_WEYL[0]) & _MASK32, (k1 + _PHILOX_WEYL[1]) & _MASK32
    return c0, c1, c2, c3


def ref_philox_uniform(seed, seq_id, position):
    """The sampler's uniform: 53 bits of Philox4x32-10 keyed by seed at (seq_id, position)."""
    seed, seq_id, position = (int(v) & 0xFFFFFFFFFFFFFFFF for v in (seed, seq_id, position))
    r = ref_philox4x32_10((seq_id & _MASK32, seq_id >> 32, position & _MASK32, position >> 32),
                          (seed & _MASK32, seed >> 32))
    return (((r[0] << 32) | r[1]) >> 11) / 2.0**53


def ref_sample_probs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """The exact distribution ``ops.sample`` draws from, in float64: HF transformers' warpers
    (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper, in that
    order, min_tokens_to_keep=1). ``logits`` is ``[vocab]`` or ``[rows, vocab]``."""
    scores = logits.detach().double().cpu()
    squeeze = scores.dim() == 1
    scores = scores.reshape(-1, scores.shape[-1])
    vocab = scores.shape[-1]
    if temperature == 0:
        probs = torch.zeros_like(scores)
        probs.scatter_(1, scores.argmax(dim=1, keepdim=True), 1.0)
        return probs[0] if squeeze else probs
    scores = scores / temperature
    if 0 < top_k < vocab:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= 1 - top_p
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(1, order, remove_sorted)
        scores = scores.masked_fill(remove, -float("inf"))
    if min_p > 0.0:
        probs = scores.softmax(dim=-1)
        remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
        remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)
        scores = scores.masked_fill(remove, -float("inf"))
    probs = scores.softmax(dim=-1)
    return probs[0] if squeeze else probs


def ref_prm_head(hidden, rows, w2, b2=None, w1=None, b1=None):
    """``ops.prm_head`` in fp32: the optional ``Linear`` + ``ReLU``, the last ``Linear``, then
    ``sigmoid`` (one class) or ``softmax(.)[1]`` (two), on the rows widened to fp32."""
    linear = torch.nn.functional.linear
    x = hidden[rows].float()
    if w1 is not None:
        x = torch.relu(linear(x, w1.float(), None if b1 is None else b1.float()))
    logits = linear(x, w2.float(), None if b2 is None else b2.float())
    if w2.shape[0] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=-1)[:, 1]
def ref_rms_norm(x, weight, eps):
    """transformers' LlamaRMSNorm: fp32 statistics, rounded to the input dtype, then scaled."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope_tables(head_dim, max_positions, dtype=torch.float32):
    """cos/sin ``[max_positions, head_dim]`` of the rotate-half rotary embedding, base 10000,
    formed in fp32 as transformers forms them, then cast to dtype."""
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.arange(max_positions).float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def ref_rotary(x, cos, sin, positions):
    """Rotate-half rotary embedding of x [num_tokens, heads, head_dim]."""
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]
    half = x.shape[-1] // 2
    return x * c + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * s


def ref_decode_layers(layers, final_norm, eps, scale, num_heads, num_kv_heads, head_dim, x,
                      cos, sin, positions, slot_mapping, block_tables, seq_lens, k_caches,
                      v_caches):
    """A Llama-family decoder stack on one decode token per sequence, op by op in torch, as
    transformers' LlamaDecoderLayer computes it. Returns (hidden, new k caches, new v caches);
    the caches passed in are not modified. layers: per layer the 12 entries that
    ponder.ops.DecodeLayers takes."""
    k_caches = [c.clone() for c in k_caches]
    v_caches = [c.clone() for c in v_caches]
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    lin = torch.nn.functional.linear
    h = x
    for i, (in_norm, qkv_w, qkv_b, q_norm, k_norm, o_w, o_b, post_norm, gu_w, gu_b, down_w,
            down_b) in enumerate(layers):
        residual = h
        qkv = lin(ref_rms_norm(h, in_norm, eps), qkv_w, qkv_b)
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(-1, num_heads, head_dim)
        k = k.reshape(-1, num_kv_heads, head_dim)
        v = v.reshape(-1, num_kv_heads, head_dim)
        if q_norm is not None:
            q, k = ref_rms_norm(q, q_norm, eps), ref_rms_norm(k, k_norm, eps)
        q, k = ref_rotary(q, cos, sin, positions), ref_rotary(k, cos, sin, positions)
        k_caches[i], v_caches[i] = ref_paged_kv_append(k, v, k_caches[i], v_caches[i],
                                                       slot_mapping)
        attn = ref_paged_attention(q, k_caches[i], v_caches[i], block_tables, seq_lens,
                                   scale=scale).to(x.dtype)
        h = residual + lin(attn.reshape(-1, q_size), o_w, o_b)
        residual = h
        gate, up = lin(ref_rms_norm(h, post_norm, eps), gu_w, gu_b).chunk(2, dim=-1)
        h = residual + lin(torch.nn.functional.silu(gate) * up, down_w, down_b)
    return ref_rms_norm(h, final_norm, eps), k_caches, v_caches
