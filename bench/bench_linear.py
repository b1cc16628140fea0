"""python bench/bench_linear.py [--json] [--dtype float32,bfloat16] [--rows 1,4,8,16] [--quick]

ponder.ops.linear against torch.nn.functional.linear on SmolLM2-135M's decode shapes.

Napkin math: one linear reads n*k weights once (fp32 4 B, bf16 2 B each) and does 2*m*n*k
flops. At ~23 GB/s of read bandwidth, a [3072, 576] fp32 weight (7.1 MB) costs >= 0.31 ms
whatever m is; m = 16 rows make that 57 MFLOP, so >= ~180 GFLOP/s is needed to stay
memory-bound. Two cores do 2 x 2 x 16 fp32 FMAs per cycle at ~3 GHz (~380 GFLOP/s peak), and
every FMA also needs an operand load: at m = 16 a kernel is compute/load-bound unless each
load feeds several FMAs. bf16 halves the bytes and, with avx512_bf16's dot product, doubles
the flops per instruction.

Each row cycles through enough copies of the weight (>= 64 MB) that it does not sit in the
cache, as in a real decode step; times are per linear (median of repeats, after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ponder import ops
from ponder.bench.timing import median_us

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (name, in_features k, out_features n) of SmolLM2-135M.
SHAPES = [("qkv", 576, 960), ("o_proj", 576, 576), ("gate_up", 576, 3072),
          ("down", 1536, 576), ("lm_head", 576, 49152)]
STREAM_BYTES = 64 << 20


def bench_one(name, k, n, m, dtype, budget_s):
    g = torch.Generator().manual_seed(0)
    elem = torch.tensor([], dtype=dtype).element_size()
    copies = max(1, -(-STREAM_BYTES // (n * k * elem)))
    ws = [(torch.randn(n, k, generator=g) / k ** 0.5).to(dtype) for _ in range(copies)]
    x = torch.randn(m, k, generator=g).to(dtype)
    got = ops.linear(x, ws[0]).float()
    want = torch.nn.functional.linear(x.float(), ws[0].float())
    tol = 1e-4 if dtype == torch.float32 else 0.1
    err = (got - want).abs().max().item()
    if err > tol:
        raise RuntimeError(f"ponder and torch disagree by {err} on {name} m={m} {dtype}")

    def ponder_fn():
        for w in ws:
            ops.linear(x, w)

    def torch_fn():
        for w in ws:
            torch.nn.functional.linear(x, w)

    ponder_ms = median_us(ponder_fn, torch.device("cpu"), budget_s) / 1e3 / copies
    torch_ms = median_us(torch_fn, torch.device("cpu"), budget_s) / 1e3 / copies
    return dict(shape=name, k=k, n=n, m=m, dtype=str(dtype).removeprefix("torch."),
                ponder_ms=round(ponder_ms, 4), torch_ms=round(torch_ms, 4),
                gbs=round(n * k * elem / ponder_ms / 1e6, 1),
                gflops=round(2 * m * n * k / ponder_ms / 1e6, 1),
                ratio=round(torch_ms / ponder_ms, 3))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--rows", default="1,4,8,16")
    p.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    p.add_argument("--budget", type=float, default=0.3, help="seconds of timing per kernel")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    wanted = args.shapes.split(",")
    rows = [bench_one(name, k, n, m, DTYPES[d], args.budget)
            for d in args.dtype.split(",") for name, k, n in SHAPES if name in wanted
            for m in map(int, args.rows.split(","))]
    if args.json:
        json.dump({"threads": torch.get_num_threads(), "rows": rows}, sys.stdout, indent=1)
        print()
        return 0
    print(f"ops.linear vs torch.nn.functional.linear, {torch.get_num_threads()} threads; "
          "ratio = torch time / ponder time (>1: ponder faster)")
    head = (f"{'dtype':<9}{'shape':<9}{'k':>6}{'n':>7}{'m':>4}{'ponder ms':>11}{'torch ms':>10}"
            f"{'GB/s':>7}{'GFLOP/s':>9}{'ratio':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['dtype']:<9}{r['shape']:<9}{r['k']:>6}{r['n']:>7}{r['m']:>4}"
              f"{r['ponder_ms']:>11.4f}{r['torch_ms']:>10.4f}{r['gbs']:>7.1f}"
              f"{r['gflops']:>9.1f}{r['ratio']:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
