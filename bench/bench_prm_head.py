"""python bench/bench_prm_head.py [--device cpu|cuda] [--dtype float32,bfloat16] [--threads N]
                                 [--hidden 576,896,1536,3584] [--rows 1,8,64,256] [--json]

ponder.ops.prm_head against the same head written in torch, in the inputs' dtype:
``softmax(linear(relu(linear(hidden[rows], w1, b1)), w2, b2).float())[:, 1]`` (a Qwen-PRM-style
2-class head), with and without the first layer.

Napkin math (CPU, 2 cores): with w1 the head reads H*H weights once (fp32 4 B, bf16 2 B) and does
2*R*H*H flops. At ~23 GB/s a [3584, 3584] bf16 weight (25.7 MB) costs >= 1.1 ms whatever R is;
R = 64 makes that 1.6 GFLOP, ~4 ms at the ~400 GFLOP/s two cores reach with avx512_bf16 (half
that in fp32): from R ~ 16 the layer is compute-bound. Without w1 the head is R*2*H products on
rows already in memory: call overhead dominates.

Each configuration cycles through enough copies of the weights (>= 64 MB) that they do not sit
in the cache, as after a model's forward; times are per call (median of repeats, after a
warm-up), checked against the fp32 reference first.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ponder import ops
from ponder.bench.timing import median_us

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STREAM_BYTES = 64 << 20
NUM_TOKENS = 1024  # the packed forward the rows are picked from


def torch_head(hidden, rows, w2, b2, w1, b1):
    x = hidden[rows]
    if w1 is not None:
        x = torch.relu(torch.nn.functional.linear(x, w1, b1))
    return torch.softmax(torch.nn.functional.linear(x, w2, b2).float(), dim=-1)[:, 1]


def bench_one(device, dtype, hidden_size, num_rows, first_layer, budget_s):
    g = torch.Generator().manual_seed(0)
    elem = torch.tensor([], dtype=dtype).element_size()
    w1_bytes = hidden_size * hidden_size * elem if first_layer else 0
    copies = max(1, -(-STREAM_BYTES // w1_bytes)) if first_layer else 1

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype).to(device)

    heads = [(rand(2, hidden_size, scale=hidden_size ** -0.5), rand(2),
              rand(hidden_size, hidden_size, scale=hidden_size ** -0.5) if first_layer else None,
              rand(hidden_size) if first_layer else None) for _ in range(copies)]
    hidden = rand(NUM_TOKENS, hidden_size)
    rows = torch.randint(0, NUM_TOKENS, (num_rows,), generator=g).to(device)
    want = torch_head(hidden.float(), rows, *(t.float() if t is not None else None
                                              for t in heads[0]))
    err = (ops.prm_head(hidden, rows, *heads[0]) - want).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"ponder and torch disagree by {err} at H={hidden_size} R={num_rows}")

    def ponder_fn():
        for head in heads:
            ops.prm_head(hidden, rows, *head)

    def torch_fn():
        for head in heads:
            torch_head(hidden, rows, *head)

    dev = torch.device(device)
    ponder_us = median_us(ponder_fn, dev, budget_s) / copies
    torch_us = median_us(torch_fn, dev, budget_s) / copies
    flops = 2 * num_rows * hidden_size * (hidden_size * first_layer + 2)
    return dict(device=device, dtype=str(dtype).removeprefix("torch."), hidden=hidden_size,
                rows=num_rows, w1=bool(first_layer), ponder_us=round(ponder_us, 1),
                torch_us=round(torch_us, 1), gbs=round(w1_bytes / ponder_us / 1e3, 1),
                gflops=round(flops / ponder_us / 1e3, 1), ratio=round(torch_us / ponder_us, 2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--hidden", default="576,896,1536,3584")
    p.add_argument("--rows", default="1,8,64,256")
    p.add_argument("--budget", type=float, default=0.3, help="seconds of timing per kernel")
    p.add_argument("--threads", type=int, help="CPU threads (torch's and ponder's OpenMP)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [bench_one(args.device, DTYPES[d], h, r, w1, args.budget)
               for d in args.dtype.split(",") for h in map(int, args.hidden.split(","))
               for r in map(int, args.rows.split(",")) for w1 in (False, True)]
    if args.json:
        json.dump({"threads": torch.get_num_threads(), "rows": results}, sys.stdout, indent=1)
        print()
        return 0
    print(f"ops.prm_head vs the torch head in the same dtype, {args.device}, "
          f"{torch.get_num_threads()} threads; ratio = torch time / ponder time (>1: ponder "
          "faster); GB/s counts w1's bytes")
    head = (f"{'dtype':<9}{'H':>6}{'R':>5}{'w1':>4}{'ponder us':>11}{'torch us':>10}"
            f"{'GB/s':>7}{'GFLOP/s':>9}{'ratio':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['dtype']:<9}{r['hidden']:>6}{r['rows']:>5}{'yes' if r['w1'] else 'no':>4}"
              f"{r['ponder_us']:>11.1f}{r['torch_us']:>10.1f}{r['gbs']:>7.1f}"
              f"{r['gflops']:>9.1f}{r['ratio']:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
