"""ponder paged attention against torch SDPA on the same data laid out contiguously.

Napkin math: attention over a KV cache reads every K and V element once per KV head group,
so a kernel is memory-bound; its floor is (K + V bytes) / read bandwidth. ponder must not
pay for paging: the target is >= 1.0x SDPA on contiguous K/V (batch 16, context 1024,
9/3 heads, head_dim 64, float32 on the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ponder import ops
from ponder.bench.timing import copy_bandwidth_gbs, median_us

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (mode, batch, context, q_len): SmolLM2-135M attention is 9 query heads, 3 KV heads, dim 64.
DEFAULT_CONFIGS = [("decode", b, ctx, 1) for b in (1, 16, 64) for ctx in (128, 1024, 4096)] + [
    ("extend", 4, 1024, 64), ("extend", 1, 512, 512)]
QUICK_CONFIGS = [("decode", 1, 128, 1), ("decode", 16, 1024, 1), ("extend", 4, 1024, 64)]


def make_case(mode, batch, ctx, q_len, heads, kv_heads, head_dim, block_size, dtype, device):
    g = torch.Generator().manual_seed(0)
    blocks_per_seq = (ctx + block_size - 1) // block_size
    num_blocks = batch * blocks_per_seq
    k = torch.randn(batch, ctx, kv_heads, head_dim, generator=g).to(dtype)
    v = torch.randn(batch, ctx, kv_heads, head_dim, generator=g).to(dtype)
    q = torch.randn(batch * q_len, heads, head_dim, generator=g).to(dtype)
    # The same values, scattered over shuffled blocks.
    perm = torch.randperm(num_blocks, generator=g)
    tables = perm.view(batch, blocks_per_seq).to(torch.int32)
    pad = blocks_per_seq * block_size - ctx
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.empty(shape, dtype=dtype)
    v_cache = torch.empty(shape, dtype=dtype)
    k_pad = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad)).view(-1, *shape[1:])
    v_pad = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, pad)).view(-1, *shape[1:])
    k_cache[perm] = k_pad
    v_cache[perm] = v_pad
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32)
    cu = None
    if mode == "extend":
        cu = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32).to(device)
    # SDPA layout: [batch, heads, tokens, head_dim], contiguous.
    sq = q.view(batch, q_len, heads, head_dim).transpose(1, 2).contiguous().to(device)
    sk = k.transpose(1, 2).contiguous().to(device)
    sv = v.transpose(1, 2).contiguous().to(device)
    mask = None
    if q_len > 1:
        pos = torch.arange(ctx - q_len, ctx)
        mask = (torch.arange(ctx)[None, :] <= pos[:, None]).to(device)
    paged = (q.to(device), k_cache.to(device), v_cache.to(device), tables.to(device),
             seq_lens.to(device), cu)
    return paged, (sq, sk, sv, mask)


def run(configs, dtype_name="float32", device="cpu", heads=9, kv_heads=3, head_dim=64,
        block_size=16, budget_s=0.3):
    device = torch.device(device)
    dtype = DTYPES[dtype_name]
    rows = []
    for mode, batch, ctx, q_len in configs:
        paged, (sq, sk, sv, mask) = make_case(mode, batch, ctx, q_len, heads, kv_heads, head_dim,
                                              block_size, dtype, device)
        q, k_cache, v_cache, tables, seq_lens, cu = paged
        out = torch.empty_like(q)

        def ponder_fn():
            return ops.paged_attention(q, k_cache, v_cache, tables, seq_lens, cu, out=out,
                                       max_seq_len=ctx)

        def sdpa_fn():
            return torch.nn.functional.scaled_dot_product_attention(sq, sk, sv, attn_mask=mask,
                                                                    enable_gqa=True)

        # Validate before timing: both kernels must agree.
        got = ponder_fn().view(batch, q_len, heads, head_dim).transpose(1, 2).float()
        want = sdpa_fn().float()
        tol = 2e-4 if dtype == torch.float32 else 3e-2
        err = (got - want).abs().max().item()
        if err > tol * max(1.0, want.abs().max().item()):
            raise RuntimeError(f"ponder and SDPA disagree by {err} on {mode} b{batch} ctx{ctx}")
        ponder_us = median_us(ponder_fn, device, budget_s)
        sdpa_us = median_us(sdpa_fn, device, budget_s)
        elem = torch.tensor([], dtype=dtype).element_size()
        kv_bytes = 2 * batch * ctx * kv_heads * head_dim * elem
        qo_bytes = 2 * batch * q_len * heads * head_dim * elem
        gbs = (kv_bytes + qo_bytes) / (ponder_us * 1e-6) / 1e9
        rows.append(dict(mode=mode, batch=batch, context=ctx, q_len=q_len, heads=heads,
                         kv_heads=kv_heads, head_dim=head_dim, block_size=block_size,
                         dtype=dtype_name, device=device.type, ponder_us=round(ponder_us, 2),
                         sdpa_us=round(sdpa_us, 2), ponder_gbs=round(gbs, 2),
                         ratio=round(sdpa_us / ponder_us, 3)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="ponder bench paged_attention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="three configurations only")
    p.add_argument("--budget", type=float, default=0.3, help="seconds of timing per kernel")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    configs = QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS
    rows = run(configs, args.dtype, args.device, args.heads, args.kv_heads, args.head_dim,
               args.block_size, args.budget)
    copy_gbs = copy_bandwidth_gbs(torch.device(args.device),
                                  1 << 30 if args.device != "cpu" else 1 << 28)
    for r in rows:
        r["share_of_copy_rate"] = round(r["ponder_gbs"] / copy_gbs, 3)
    if args.json:
        json.dump({"threads": torch.get_num_threads(), "copy_gbs": round(copy_gbs, 1),
                   "rows": rows}, sys.stdout, indent=1)
        print()
        return 0
    print(f"paged_attention vs SDPA (contiguous K/V, enable_gqa) on {args.device}, "
          f"{args.dtype}, {torch.get_num_threads()} threads; measured copy rate "
          f"{copy_gbs:.1f} GB/s; ratio = SDPA time / ponder time (>1: ponder faster)")
    head = (f"{'mode':<7}{'batch':>6}{'ctx':>6}{'q_len':>6}{'heads':>7}{'ponder us':>11}"
            f"{'sdpa us':>11}{'GB/s':>9}{'of copy':>9}{'ratio':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['mode']:<7}{r['batch']:>6}{r['context']:>6}{r['q_len']:>6}"
              f"{str(r['heads']) + '/' + str(r['kv_heads']):>7}{r['ponder_us']:>11.1f}"
              f"{r['sdpa_us']:>11.1f}{r['ponder_gbs']:>9.1f}{r['share_of_copy_rate']:>9.2f}"
              f"{r['ratio']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
