"""torch.ops.ponder.*: the kernels as registered torch operators. torch.library.opcheck checks
each registration (schema and declared mutations against what the kernel really writes, the
fake kernel's shapes and dtypes against the real outputs, tracing through AOT autograd), and a
decoder-layer attention block compiled with torch.compile(fullgraph=True) is checked against
the pure-torch references."""

import pytest
import torch

import ponder  # noqa: F401  (registers torch.ops.ponder)
from tests.kernels.paged import make_paged
from tests.reference import (
    ref_paged_attention,
    ref_paged_kv_append,
    ref_rms_norm,
    ref_rotary,
    rope_tables,
)

H, HEADS, KV_HEADS, D, BS = 64, 4, 2, 16, 16


def _cases(device):
    g = torch.Generator().manual_seed(0)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    k_cache, v_cache, tables, lens = make_paged([5, 20], KV_HEADS, D, BS, torch.float32, device)
    cos, sin = rope_tables(D, 64)
    n = 3
    logits = r(n, 50)
    return {
        "paged_kv_append": (r(2, KV_HEADS, D), r(2, KV_HEADS, D), k_cache.clone(),
                            v_cache.clone(), torch.tensor([3, 40], device=device)),
        "paged_attention": (r(2, HEADS, D), k_cache, v_cache, tables, lens),
        "paged_attention_extend": (r(7, HEADS, D), k_cache, v_cache, tables, lens,
                                   torch.tensor([0, 2, 7], dtype=torch.int32, device=device),
                                   0.3),
        "copy_blocks": ([k_cache.clone(), k_cache.clone()], [v_cache.clone(), v_cache.clone()],
                        torch.tensor([0, 1], device=device), torch.tensor([2, 3], device=device)),
        "sample": (logits, torch.tensor([0.0, 1.0, 0.7], device=device),
                   torch.tensor([0, 5, 0], dtype=torch.int32, device=device),
                   torch.tensor([1.0, 0.9, 1.0], device=device), torch.zeros(n, device=device),
                   torch.zeros(n, dtype=torch.int64, device=device),
                   torch.arange(n, device=device), torch.full((n,), 7, device=device), 3),
        "linear": (r(5, H), r(96, H), r(96)),
        "rms_norm": (r(5, H), r(H), 1e-6, r(5, H)),
        "rotary": (r(5, HEADS, D), r(5, KV_HEADS, D), cos.to(device), sin.to(device),
                   torch.tensor([0, 3, 9, 9, 63], device=device)),
        "silu_and_mul": (r(5, 2 * H),),
        "prm_head": (r(10, H), torch.tensor([3, 9, 3], device=device), r(2, H) / 8, r(2),
                     r(H, H) / 8, r(H)),
    }


@pytest.mark.parametrize("name", ["paged_kv_append", "paged_attention", "paged_attention_extend",
                                  "copy_blocks", "sample", "linear", "rms_norm", "rotary",
                                  "silu_and_mul", "prm_head"])
def test_opcheck(name, device):
    args = _cases(device)[name]
    op = getattr(torch.ops.ponder, name.removesuffix("_extend"))
    torch.library.opcheck(op, args)


def test_results_are_the_kernels(device):
    """Through the dispatcher, each op returns what its reference computes."""
    c = _cases(device)
    q, k_cache, v_cache, tables, lens = c["paged_attention"]
    torch.testing.assert_close(torch.ops.ponder.paged_attention(q, k_cache, v_cache, tables, lens),
                               ref_paged_attention(q, k_cache, v_cache, tables, lens).to(device),
                               atol=2e-5, rtol=1e-4)
    key, value, kc, vc, slots = c["paged_kv_append"]
    want_k, want_v = ref_paged_kv_append(key, value, kc, vc, slots)
    torch.ops.ponder.paged_kv_append(key, value, kc, vc, slots)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)
    x, w, eps, res = c["rms_norm"]
    want_res = res + x
    got = torch.ops.ponder.rms_norm(x, w, eps, res)
    assert torch.equal(res, want_res)  # the residual is updated in place
    torch.testing.assert_close(got, ref_rms_norm(want_res, w, eps), atol=1e-5, rtol=1e-5)
    logits = c["sample"][0]
    tokens, logprobs, top_ids, _ = torch.ops.ponder.sample(*c["sample"])
    assert int(tokens[0]) == int(logits[0].argmax())  # row 0 is greedy
    assert top_ids.shape == (3, 3)
    torch.testing.assert_close(logprobs[0], torch.log_softmax(logits[0], -1).max())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="query"):
        torch.ops.ponder.paged_attention(torch.zeros(4, 16), torch.zeros(2, 16, 1, 16),
                                         torch.zeros(2, 16, 1, 16),
                                         torch.zeros(1, 2, dtype=torch.int32),
                                         torch.ones(1, dtype=torch.int32))


def test_compiled_attention_block(device):
    """RMSNorm -> QKV -> rotary -> KV append -> paged attention -> O projection, compiled
    whole (fullgraph: no graph breaks) and run twice (two decode steps), against the
    references; the caches the compiled graph writes are the ones the references expect."""
    g = torch.Generator().manual_seed(5)
    wn = (1 + 0.1 * torch.randn(H, generator=g)).to(device)
    wqkv = (torch.randn((HEADS + 2 * KV_HEADS) * D, H, generator=g) / 8).to(device)
    wo = (torch.randn(H, HEADS * D, generator=g) / 8).to(device)
    cos, sin = (t.to(device) for t in rope_tables(D, 64))
    k_cache, v_cache, tables, _ = make_paged([30, 30], KV_HEADS, D, BS, torch.float32, device)

    def block(x, positions, slots, lens, k_cache, v_cache):
        h = torch.ops.ponder.rms_norm(x, wn, 1e-6)
        qkv = torch.ops.ponder.linear(h, wqkv)
        q, k, v = qkv.split([HEADS * D, KV_HEADS * D, KV_HEADS * D], -1)
        q = q.reshape(-1, HEADS, D).contiguous()
        k = k.reshape(-1, KV_HEADS, D).contiguous()
        v = v.reshape(-1, KV_HEADS, D).contiguous()
        torch.ops.ponder.rotary(q, k, cos, sin, positions)
        torch.ops.ponder.paged_kv_append(k, v, k_cache, v_cache, slots)
        attn = torch.ops.ponder.paged_attention(q, k_cache, v_cache, tables, lens)
        return torch.ops.ponder.linear(attn.reshape(-1, HEADS * D), wo)

    def reference(x, positions, slots, lens, k_cache, v_cache):
        h = ref_rms_norm(x, wn, 1e-6)
        q, k, v = (h @ wqkv.T).split([HEADS * D, KV_HEADS * D, KV_HEADS * D], -1)
        q = ref_rotary(q.reshape(-1, HEADS, D), cos, sin, positions)
        k = ref_rotary(k.reshape(-1, KV_HEADS, D), cos, sin, positions)
        kc, vc = ref_paged_kv_append(k, v.reshape(-1, KV_HEADS, D), k_cache, v_cache, slots)
        attn = ref_paged_attention(q, kc, vc, tables, lens).to(x.device)
        return attn.reshape(-1, HEADS * D) @ wo.T, kc, vc

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager", dynamic=False)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    for step in range(2):
        pos = torch.tensor([29 + step, 29 + step], device=device)
        slots = torch.stack([tables[b, p // BS].long() * BS + p % BS for b, p in
                             enumerate(pos.tolist())]).to(device)
        lens = (pos + 1).to(torch.int32)
        x = torch.randn(2, H, generator=g).to(device)
        want, ref_k, ref_v = reference(x, pos, slots, lens, ref_k, ref_v)
        got = compiled(x, pos, slots, lens, k_cache, v_cache)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        # The new rows come from ponder's GEMV (its own summation order): fp32 tolerance. A
        # write lost in functionalization would leave the old random rows there.
        torch.testing.assert_close(k_cache, ref_k, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(v_cache, ref_v, atol=2e-5, rtol=1e-4)
