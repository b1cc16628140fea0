"""Fused layer ops against the torch formulation transformers uses (bitwise where the math
is elementwise, fp32 tolerance where a reduction order differs)."""

import pytest
import torch

from ponder import _core, ops
from tests.reference import ref_rms_norm, ref_rotary, rope_tables

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden", [(1, 576), (7, 64), (33, 100)])
def test_rms_norm(dtype, tokens, hidden):
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype)
    res = torch.randn(tokens, hidden, generator=g).to(dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), ref_rms_norm(x, w, 1e-5), **tol)
    res_ref = res + x
    got = ops.rms_norm(x, w, 1e-5, residual=res)
    assert torch.equal(res, res_ref)  # the residual add rounds like torch's
    torch.testing.assert_close(got, ref_rms_norm(res_ref, w, 1e-5), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_transformers_formula(dtype):
    g = torch.Generator().manual_seed(0)
    t, hq, hk, d = 9, 6, 2, 64
    q = torch.randn(t, hq, d, generator=g).to(dtype)
    k = torch.randn(t, hk, d, generator=g).to(dtype)
    cos, sin = rope_tables(d, 100, dtype)
    pos = torch.tensor([0, 5, 17, 99, 3, 3, 40, 41, 42])
    want_q, want_k = ref_rotary(q, cos, sin, pos), ref_rotary(k, cos, sin, pos)
    ops.rotary(q, k, cos, sin, pos)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    g = torch.Generator().manual_seed(1)
    gu = (3 * torch.randn(5, 2 * 96, generator=g)).to(dtype)
    gate, up = gu.chunk(2, -1)
    want = torch.nn.functional.silu(gate) * up
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ops.silu_and_mul(gu), want, **tol)


def test_bad_input():
    x, w = torch.randn(2, 8), torch.ones(8)
    with pytest.raises(ValueError, match="weight"):
        _core.rms_norm(x, torch.ones(9), 1e-5, None, torch.empty(2, 8))
    with pytest.raises(ValueError, match="residual"):
        _core.rms_norm(x, w, 1e-5, torch.randn(3, 8), torch.empty(2, 8))
    with pytest.raises(TypeError, match="x"):
        _core.rms_norm(x.double(), w, 1e-5, None, torch.empty(2, 8))
    q, k = torch.randn(2, 2, 4), torch.randn(2, 1, 4)
    cos = sin = torch.ones(3, 4)
    with pytest.raises(ValueError, match="positions"):
        _core.rotary(q, k, cos, sin, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="positions"):
        _core.rotary(q, k, cos, sin, torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="gate_up"):
        _core.silu_and_mul(torch.randn(2, 5), torch.empty(2, 2))
