"""decode_layers (the whole decoder stack in one call) against the per-op path (bitwise) and
a pure-torch Llama decoder stack (tolerance), and its bad-input checks."""

import pytest
import torch

from ponder import ops
from tests.kernels.paged import make_paged
from tests.reference import ref_decode_layers, rope_tables

# hidden, num_heads, num_kv_heads, head_dim, inter: GQA 2 and 1, a head_dim and sizes that
# are not multiples of the GEMV's vector width.
SHAPES = [(64, 4, 2, 16, 96), (72, 3, 3, 24, 40)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_stack(dtype, hidden, num_heads, num_kv_heads, head_dim, inter, num_layers=3,
               bias=False, qk_norm=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=None):
        t = torch.randn(*shape, generator=g) * (scale if scale else shape[-1] ** -0.5)
        return t.to(dtype)

    def norm(n):
        return (1 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    qkv = (num_heads + 2 * num_kv_heads) * head_dim
    layers = []
    for _ in range(num_layers):
        layers.append([
            norm(hidden), w(qkv, hidden), w(qkv, scale=0.1) if bias else None,
            norm(head_dim) if qk_norm else None, norm(head_dim) if qk_norm else None,
            w(hidden, num_heads * head_dim), w(hidden, scale=0.1) if bias else None,
            norm(hidden), w(2 * inter, hidden), w(2 * inter, scale=0.1) if bias else None,
            w(hidden, inter), w(hidden, scale=0.1) if bias else None])
    return layers, norm(hidden)


def decode_inputs(seq_lens, num_layers, num_kv_heads, head_dim, block_size, dtype, hidden,
                  seed=0):
    """One new token per sequence at position seq_len - 1 of a random paged cache."""
    caches = [make_paged(seq_lens, num_kv_heads, head_dim, block_size, dtype, "cpu",
                         seed=seed + i) for i in range(num_layers)]
    k_caches, v_caches = [c[0] for c in caches], [c[1] for c in caches]
    tables, lens = caches[0][2], caches[0][3]  # the caches are alike: any layer's table fits
    pos = lens.long() - 1
    slots = torch.stack([tables[b, p // block_size].long() * block_size + p % block_size
                         for b, p in enumerate(pos.tolist())])
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(len(seq_lens), hidden, generator=g).to(dtype)
    return x, pos, slots, tables, lens, k_caches, v_caches


def per_op(layers, final_norm, eps, scale, num_heads, num_kv_heads, head_dim, x, cos, sin,
           pos, slots, tables, lens, k_caches, v_caches):
    """The model's per-op path (ponder.models.llama), call by call."""
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    residual, h = x.clone(), None
    for i, (in_norm, qkv_w, qkv_b, q_norm, k_norm, o_w, o_b, post_norm, gu_w, gu_b, down_w,
            down_b) in enumerate(layers):
        n = ops.rms_norm(residual if h is None else h, in_norm, eps,
                         None if h is None else residual)
        q, k, v = ops.linear(n, qkv_w, qkv_b).split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(-1, num_heads, head_dim).contiguous()
        k = k.reshape(-1, num_kv_heads, head_dim).contiguous()
        v = v.reshape(-1, num_kv_heads, head_dim).contiguous()
        if q_norm is not None:
            q = ops.rms_norm(q.view(-1, head_dim), q_norm, eps).view(q.shape)
            k = ops.rms_norm(k.view(-1, head_dim), k_norm, eps).view(k.shape)
        ops.rotary(q, k, cos, sin, pos)
        ops.paged_kv_append(k, v, k_caches[i], v_caches[i], slots)
        a = ops.paged_attention(q, k_caches[i], v_caches[i], tables, lens, None, scale)
        h = ops.linear(a.view(-1, q_size), o_w, o_b)
        n = ops.rms_norm(h, post_norm, eps, residual)
        h = ops.linear(ops.silu_and_mul(ops.linear(n, gu_w, gu_b)), down_w, down_b)
    if h is None:
        return ops.rms_norm(residual, final_norm, eps)
    return ops.rms_norm(h, final_norm, eps, residual)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seq_lens", [[1], [37, 5, 16], [3, 70, 17, 33, 1, 9, 64, 20, 2, 45, 11,
                                                         48, 6, 31, 15, 50]])
@pytest.mark.parametrize("variant", ["plain", "bias", "qk_norm"])
@pytest.mark.parametrize("block_size", [16, 5])
def test_matches_per_op_and_reference(dtype, shape, seq_lens, variant, block_size):
    hidden, heads, kv_heads, head_dim, inter = shape
    num_layers, eps = 3, 1e-5
    scale = head_dim ** -0.5
    layers, final_norm = make_stack(dtype, *shape, num_layers, bias=variant == "bias",
                                    qk_norm=variant == "qk_norm")
    cos, sin = rope_tables(head_dim, 128, dtype)
    x, pos, slots, tables, lens, k_caches, v_caches = decode_inputs(
        seq_lens, num_layers, kv_heads, head_dim, block_size, dtype, hidden)
    want, want_k, want_v = ref_decode_layers(layers, final_norm, eps, scale, heads, kv_heads,
                                             head_dim, x, cos, sin, pos, slots, tables, lens,
                                             k_caches, v_caches)
    k_ops, v_ops = [c.clone() for c in k_caches], [c.clone() for c in v_caches]
    ops_out = per_op(layers, final_norm, eps, scale, heads, kv_heads, head_dim, x, cos, sin,
                     pos, slots, tables, lens, k_ops, v_ops)
    stack = ops.DecodeLayers(layers, final_norm, eps, scale, heads, kv_heads, head_dim)
    x_before = x.clone()
    got = stack(x, cos, sin, pos, slots, tables, lens, k_caches, v_caches)
    assert torch.equal(x, x_before)  # the embeddings are an input only
    # The same kernels in the same order: bitwise the per-op path, caches included.
    assert torch.equal(got, ops_out)
    for i in range(num_layers):
        assert torch.equal(k_caches[i], k_ops[i]) and torch.equal(v_caches[i], v_ops[i])
    # Against torch op by op: normalized MSE, as ggml compares backends (bf16/fp16 round
    # after every op, so errors grow through the layers).
    nmse = ((got.float() - want.float()) ** 2).mean() / (want.float() ** 2).mean()
    assert nmse < {torch.float32: 1e-10, torch.bfloat16: 1e-3, torch.float16: 1e-5}[dtype]
    for i in range(num_layers):  # the K/V written at each layer, within the same tolerance
        for c, ref in ((k_caches[i], want_k[i]), (v_caches[i], want_v[i])):
            e = ((c.float() - ref.float()) ** 2).mean() / (ref.float() ** 2).mean()
            assert e < {torch.float32: 1e-10, torch.bfloat16: 1e-3, torch.float16: 1e-5}[dtype]


def test_out_buffer_and_reuse():
    layers, final_norm = make_stack(torch.float32, *SHAPES[0])
    stack = ops.DecodeLayers(layers, final_norm, 1e-6, 0.25, 4, 2, 16)
    assert stack.num_layers == 3
    cos, sin = rope_tables(16, 128)
    args = decode_inputs([9, 30], 3, 2, 16, 16, torch.float32, 64)
    x, rest = args[0], args[1:]
    out = torch.empty_like(x)
    assert stack(x, cos, sin, *rest, out=out) is out
    # Running the same step again rewrites the same K/V: the same result.
    assert torch.equal(stack(x, cos, sin, *rest), out)


# --- bad input ------------------------------------------------------------------------------
def _good():
    layers, final_norm = make_stack(torch.float32, 64, 4, 2, 16, 96, num_layers=2)
    cos, sin = rope_tables(16, 128)
    x, pos, slots, tables, lens, k, v = decode_inputs([9, 30], 2, 2, 16, 16, torch.float32, 64)
    return layers, final_norm, dict(x=x, cos=cos, sin=sin, positions=pos, slot_mapping=slots,
                                    block_tables=tables, seq_lens=lens, k_caches=k, v_caches=v)


def _replace(layers, i, field, value):
    layers = [list(lay) for lay in layers]
    layers[i][field] = value
    return layers


@pytest.mark.parametrize("name,exc,change", [
    ("layers", TypeError, lambda ls: 5),
    ("layers\\[1\\]", TypeError, lambda ls: [ls[0], ls[1][:11]]),
    ("layers\\[0\\].qkv", ValueError, lambda ls: _replace(ls, 0, 1, None)),
    ("layers\\[1\\].qkv", ValueError, lambda ls: _replace(ls, 1, 1, torch.randn(127, 64))),
    ("layers\\[0\\].o", TypeError, lambda ls: _replace(ls, 0, 5, ls[0][5].double())),
    ("layers\\[1\\].down", ValueError, lambda ls: _replace(ls, 1, 10, torch.randn(64, 95))),
    ("layers\\[1\\].gate_up", ValueError, lambda ls: _replace(ls, 1, 8, torch.randn(190, 64))),
    ("layers\\[0\\].input_norm", ValueError,
     lambda ls: _replace(ls, 0, 0, torch.randn(128)[::2])),
    ("q_norm and k_norm", ValueError, lambda ls: _replace(ls, 0, 3, torch.ones(16))),
    ("layers\\[0\\].qkv_bias", ValueError, lambda ls: _replace(ls, 0, 2, torch.randn(5))),
])
def test_bad_weights(name, exc, change):
    layers, final_norm, _ = _good()
    with pytest.raises(exc, match=name):
        ops.DecodeLayers(change(layers), final_norm, 1e-5, 0.25, 4, 2, 16)


def test_bad_config():
    layers, final_norm, _ = _good()
    with pytest.raises(ValueError, match="num_kv_heads"):
        ops.DecodeLayers(layers, final_norm, 1e-5, 0.25, 4, 3, 16)
    with pytest.raises(ValueError, match="head_dim"):
        ops.DecodeLayers(layers, final_norm, 1e-5, 0.25, 4, 2, 15)
    with pytest.raises(ValueError, match="eps"):
        ops.DecodeLayers(layers, final_norm, float("nan"), 0.25, 4, 2, 16)
    with pytest.raises(TypeError, match="final_norm"):
        ops.DecodeLayers(layers, final_norm.half(), 1e-5, 0.25, 4, 2, 16)


def _bad_tables(a):
    t = a["block_tables"].clone()
    t[1, 1] = 99
    return dict(block_tables=t)


@pytest.mark.parametrize("name,exc,change", [
    ("x", ValueError, lambda a: dict(x=torch.randn(17, 64))),
    ("x", ValueError, lambda a: dict(x=torch.randn(2, 63))),
    ("x", TypeError, lambda a: dict(x=a["x"].double())),
    ("x", TypeError, lambda a: dict(x=[[0.0]])),
    ("positions", ValueError, lambda a: dict(positions=torch.tensor([8, 128]))),
    ("positions", TypeError, lambda a: dict(positions=a["positions"].int())),
    ("slot_mapping", ValueError, lambda a: dict(slot_mapping=torch.tensor([8, 10**6]))),
    ("slot_mapping", ValueError, lambda a: dict(slot_mapping=torch.tensor([8]))),
    ("block_tables", ValueError, _bad_tables),
    ("block_tables", TypeError, lambda a: dict(block_tables=a["block_tables"].long())),
    ("seq_lens", ValueError, lambda a: dict(seq_lens=torch.tensor([9, 0], dtype=torch.int32))),
    ("seq_lens", ValueError, lambda a: dict(seq_lens=torch.tensor([9, 10**4],
                                                                  dtype=torch.int32))),
    ("cos", ValueError, lambda a: dict(cos=a["cos"][:, :8].contiguous())),
    ("sin", ValueError, lambda a: dict(sin=a["sin"][:10])),
    ("k_caches", ValueError, lambda a: dict(k_caches=a["k_caches"][:1])),
    ("v_caches\\[1\\]", ValueError, lambda a: dict(v_caches=[a["v_caches"][0],
                                                             a["v_caches"][1][:, :8]])),
    ("k_caches\\[1\\]", TypeError, lambda a: dict(k_caches=[a["k_caches"][0],
                                                            a["k_caches"][1].half()])),
    ("v_caches\\[0\\]", ValueError, lambda a: dict(v_caches=[a["k_caches"][0],
                                                             a["v_caches"][1]])),
    ("k_caches", TypeError, lambda a: dict(k_caches=a["k_caches"][0])),
])
def test_bad_step_inputs(name, exc, change):
    layers, final_norm, args = _good()
    stack = ops.DecodeLayers(layers, final_norm, 1e-5, 0.25, 4, 2, 16)
    args.update(change(args))
    with pytest.raises(exc, match=name):
        stack(**args)
