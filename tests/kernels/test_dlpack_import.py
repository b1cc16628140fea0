"""Tensor arguments of the kernel bindings: the DLPack C exchange API fast path and nanobind's
__dlpack__ fallback must see the same data (offsets, strides, dtypes) and give the same results."""

import numpy as np
import pytest
import torch

from ponder import _core
from tests.kernels.paged import TOLERANCES, make_paged
from tests.reference import ref_copy_blocks, ref_paged_attention

HAS_EXCHANGE_API = hasattr(torch.Tensor, "__dlpack_c_exchange_api__")
needs_exchange = pytest.mark.skipif(not HAS_EXCHANGE_API,
                                    reason="torch < 2.10 has no DLPack C exchange API")


class NoExchange(torch.Tensor):
    """A torch tensor whose type hides the exchange API, so the binding uses __dlpack__."""

    __dlpack_c_exchange_api__ = None


def via_dlpack(t):
    return None if t is None else t.as_subclass(NoExchange)


def attention(query, k_cache, v_cache, tables, lens, out, wrap=lambda t: t):
    _core.paged_attention(wrap(query), wrap(k_cache), wrap(v_cache), wrap(tables), wrap(lens),
                          None, wrap(out), query.shape[-1] ** -0.5)
    return out


@needs_exchange
def test_torch_tensors_take_the_exchange_path():
    assert _core._tensor_import_path(torch.zeros(3)) == "exchange"
    assert _core._tensor_import_path(torch.zeros(4, 6)[1:, ::2]) == "exchange"
    assert _core._tensor_import_path(torch.zeros((), dtype=torch.bfloat16)) == "exchange"


def test_other_arrays_take_the_fallback():
    assert _core._tensor_import_path(np.zeros(3)) == "dlpack"
    assert _core._tensor_import_path(via_dlpack(torch.zeros(3))) == "dlpack"
    assert _core._tensor_import_path("cache") == "none"
    assert _core._tensor_import_path([1.0]) == "none"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_same_through_both_paths(dtype):
    k_cache, v_cache, tables, lens = make_paged([100], 3, 64, 16, dtype, "cpu")
    query = torch.randn(1, 9, 64).to(dtype)
    fast = attention(query, k_cache, v_cache, tables, lens, torch.empty_like(query))
    slow = attention(query, k_cache, v_cache, tables, lens, torch.empty_like(query), via_dlpack)
    assert torch.equal(fast, slow)
    ref = ref_paged_attention(query, k_cache, v_cache, tables, lens)
    torch.testing.assert_close(fast.float(), ref, **TOLERANCES[dtype])


def test_paged_attention_numpy_matches_torch():
    k_cache, v_cache, tables, lens = make_paged([37, 5], 2, 32, 16, torch.float32, "cpu")
    query = torch.randn(2, 4, 32)
    fast = attention(query, k_cache, v_cache, tables, lens, torch.empty_like(query))
    out = np.empty((2, 4, 32), dtype=np.float32)
    attention(query, k_cache, v_cache, tables, lens, out, lambda t: np.asarray(t))
    assert torch.equal(fast, torch.from_numpy(out))


@pytest.mark.parametrize("wrap", [lambda t: t, via_dlpack], ids=["exchange", "dlpack"])
def test_views_with_a_storage_offset(wrap):
    """Slices start mid-storage: a lost byte_offset/data offset would read the wrong rows."""
    k_cache, v_cache, tables, lens = make_paged([40], 3, 64, 16, torch.float32, "cpu")
    num_blocks = k_cache.shape[0]
    k_big = torch.randn(num_blocks + 2, *k_cache.shape[1:])
    v_big = torch.randn(num_blocks + 3, *v_cache.shape[1:])
    k_big[2:] = k_cache
    v_big[3:] = v_cache
    q_big = torch.randn(5, 9, 64)
    out_big = torch.full((4, 9, 64), 7.0)
    tables_big = torch.cat([torch.full((1, tables.shape[1]), -5, dtype=torch.int32), tables])
    lens_big = torch.tensor([999, 40], dtype=torch.int32)
    for view in (k_big[2:], v_big[3:], q_big[3:4], out_big[1:2], tables_big[1:], lens_big[1:]):
        assert view.storage_offset() > 0 and view.is_contiguous()

    attention(q_big[3:4], k_big[2:], v_big[3:], tables_big[1:], lens_big[1:], out_big[1:2], wrap)
    ref = ref_paged_attention(q_big[3:4].clone(), k_cache, v_cache, tables, lens)
    torch.testing.assert_close(out_big[1:2], ref, **TOLERANCES[torch.float32])
    assert (out_big[0] == 7.0).all() and (out_big[2:] == 7.0).all()


@pytest.mark.parametrize("wrap", [lambda t: t, via_dlpack, lambda t: np.asarray(t)],
                         ids=["exchange", "dlpack", "numpy"])
def test_strides_and_shapes_are_seen(wrap):
    k_cache, v_cache, tables, lens = make_paged([20], 2, 64, 16, torch.float32, "cpu")
    query, out = torch.randn(1, 4, 64), torch.empty(1, 4, 64)
    transposed = torch.randn(1, 64, 4).transpose(1, 2)
    with pytest.raises(ValueError, match="query must be contiguous"):
        attention(transposed, k_cache, v_cache, tables, lens, out, wrap)
    every_other = torch.stack([tables, tables], dim=2).flatten(1)[:, ::2]
    assert torch.equal(every_other, tables) and every_other.stride() == (6, 2)
    with pytest.raises(ValueError, match="block_tables must be contiguous"):
        attention(query, k_cache, v_cache, every_other, lens, out, wrap)
    with pytest.raises(ValueError, match=r"seq_lens must have 1 dimensions, got shape \[\]"):
        attention(query, k_cache, v_cache, tables, torch.tensor(20, dtype=torch.int32), out, wrap)
    with pytest.raises(ValueError, match=r"out has shape \[1, 4, 63\]"):
        attention(query, k_cache, v_cache, tables, lens, torch.empty(1, 4, 63), wrap)


@pytest.mark.parametrize("wrap", [lambda t: t, via_dlpack], ids=["exchange", "dlpack"])
def test_empty_tensors(wrap):
    k_cache, v_cache, _, _ = make_paged([20], 2, 64, 16, torch.float32, "cpu")
    query = torch.empty(0, 4, 64)
    attention(query, k_cache, v_cache, torch.empty(0, 2, dtype=torch.int32),
              torch.empty(0, dtype=torch.int32), torch.empty(0, 4, 64), wrap)
    before = k_cache.clone()
    empty = torch.empty(0, dtype=torch.int64)
    _core.copy_blocks([wrap(k_cache)], [wrap(v_cache)], wrap(empty), wrap(empty))
    assert torch.equal(k_cache, before)


@pytest.mark.parametrize("wrap", [lambda t: t, via_dlpack], ids=["exchange", "dlpack"])
def test_copy_blocks_sequences(wrap):
    shape = (6, 16, 2, 8)
    k_caches = [torch.randn(shape, dtype=torch.bfloat16) for _ in range(3)]
    v_caches = [torch.randn(shape, dtype=torch.bfloat16) for _ in range(3)]
    src, dst = torch.tensor([0, 4]), torch.tensor([1, 5])
    ref_k, ref_v = ref_copy_blocks(k_caches, v_caches, src, dst)
    _core.copy_blocks([wrap(c) for c in k_caches], tuple(wrap(c) for c in v_caches), wrap(src),
                      wrap(dst))
    assert all(torch.equal(a, b) for a, b in zip(k_caches + v_caches, ref_k + ref_v, strict=True))


def test_sample_same_through_both_paths():
    n, vocab = 4, 50
    logits = torch.randn(n, vocab, dtype=torch.bfloat16)
    args = [torch.full((n,), 0.8), torch.full((n,), 10, dtype=torch.int32), torch.full((n,), 0.9),
            torch.zeros(n), torch.arange(n), torch.full((n,), 3), torch.arange(n) + 11]

    def run(wrap):
        outs = [torch.empty(n, dtype=torch.int64), torch.empty(n), torch.empty(n, 2,
                dtype=torch.int64), torch.empty(n, 2)]
        _core.sample(*(wrap(t) for t in [logits, *args, *outs]), num_logprobs=2)
        return outs

    fast, slow = run(lambda t: t), run(via_dlpack)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))


def test_non_tensors_name_the_argument():
    k_cache, v_cache, tables, lens = make_paged([20], 2, 64, 16, torch.float32, "cpu")
    query, out = torch.randn(1, 4, 64), torch.empty(1, 4, 64)
    with pytest.raises(TypeError, match="block_tables must be a tensor"):
        attention(query, k_cache, v_cache, "tables", lens, out)
    with pytest.raises(TypeError, match="out must be a tensor"):
        _core.paged_attention(query, k_cache, v_cache, tables, lens, None, None, 1.0)
    with pytest.raises(TypeError, match="cu_query_lens must be a tensor"):
        _core.paged_attention(query, k_cache, v_cache, tables, lens, [0, 1], out, 1.0)
    with pytest.raises(TypeError, match=r"k_caches\[1\] must be a tensor"):
        _core.copy_blocks([k_cache, 1], [v_cache, v_cache], torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(TypeError, match="v_caches must be a sequence"):
        _core.copy_blocks([k_cache], v_cache.numpy().tobytes(), torch.tensor([0]),
                          torch.tensor([1]))


@needs_exchange
def test_meta_tensor_refused_with_the_producers_reason():
    k_cache, v_cache, tables, _ = make_paged([20], 2, 64, 16, torch.float32, "cpu")
    query, out = torch.randn(1, 4, 64), torch.empty(1, 4, 64)
    meta = torch.tensor([20], dtype=torch.int32, device="meta")
    with pytest.raises(TypeError, match="seq_lens must be a tensor .*meta") as info:
        attention(query, k_cache, v_cache, tables, meta, out)
    assert "\n" not in str(info.value)
