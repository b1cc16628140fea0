import pytest
import torch

from ponder import _core, ops

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-5), torch.bfloat16: dict(atol=0.1, rtol=1e-2),
       torch.float16: dict(atol=2e-2, rtol=2e-3)}


# Paths: fp32 FMA on widened inputs for every dtype; bf16 also through avx512_bf16 dot products.
PATHS = [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True),
         (torch.float16, False)]


# n and k that are not multiples of the 4-row tile or the 16/32-element vector exercise the
# tails (masked loads, single weight rows); m covers every row-block remainder.
@pytest.mark.parametrize("dtype,bf16_dot", PATHS)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 13, 16])
@pytest.mark.parametrize("k,n", [(576, 960), (64, 5), (40, 33), (1536, 576), (7, 3),
                                 (48, 18)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch(dtype, bf16_dot, m, k, n, bias):
    if bf16_dot and not _core.LINEAR_HAS_BF16_DOT:
        pytest.skip("CPU lacks avx512_bf16")
    g = torch.Generator().manual_seed(m * 1000 + k + n)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    out = torch.empty(m, n, dtype=dtype)
    _core.linear(x, w, b, out, bf16_dot=bf16_dot)
    ref = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])


def test_ops_linear_dispatch():
    x = torch.randn(2, 3, 64)
    w = torch.randn(32, 64)
    torch.testing.assert_close(ops.linear(x, w), torch.nn.functional.linear(x, w),
                               atol=1e-4, rtol=1e-5)
    big = torch.randn(40, 64)  # several blocks of 16 rows
    torch.testing.assert_close(ops.linear(big, w), torch.nn.functional.linear(big, w),
                               atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bf16_dot", [True, False])
@pytest.mark.parametrize("k,n", [(64, 32), (576, 960), (100, 37)])
def test_rows_are_batch_invariant(dtype, bf16_dot, k, n):
    # A row's output must be bitwise the same alone, in any block of rows and past 16 rows:
    # the engine's seeded results may not depend on what else is batched.
    torch.manual_seed(k + n)
    x = torch.randn(41, k).to(dtype)
    w = (torch.randn(n, k) / k**0.5).to(dtype)
    b = torch.randn(n).to(dtype)
    full = torch.empty(41, n, dtype=dtype)
    _core.linear(x, w, b, full, bf16_dot=bf16_dot)
    for lo, hi in [(0, 1), (3, 4), (0, 2), (5, 9), (7, 23), (40, 41), (1, 41)]:
        part = torch.empty(hi - lo, n, dtype=dtype)
        _core.linear(x[lo:hi].contiguous(), w, b, part, bf16_dot=bf16_dot)
        assert torch.equal(part, full[lo:hi]), (lo, hi)


def test_bad_input():
    x, w, out = torch.randn(2, 8), torch.randn(4, 8), torch.empty(2, 4)
    with pytest.raises(ValueError, match="weight"):
        _core.linear(x, torch.randn(4, 9), None, out)
    with pytest.raises(TypeError, match="x"):
        _core.linear(x.double(), w, None, out)
    with pytest.raises(ValueError, match="out"):
        _core.linear(x, w, None, torch.empty(2, 5))
    with pytest.raises(ValueError, match="bias"):
        _core.linear(x, w, torch.randn(5), out)
    with pytest.raises(ValueError, match="contiguous"):
        _core.linear(torch.randn(8, 2).t(), w, None, out)
