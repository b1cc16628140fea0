import pytest
import torch

from ponder import ops
from tests.kernels.paged import TOLERANCES, make_paged
from tests.reference import ref_paged_attention

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEADS = [(4, 4), (9, 3), (8, 1)]  # (num_heads, num_kv_heads): MHA, SmolLM2's GQA, MQA
SEQ_LENS = [1, 17, 45, 100, 203]
Q_LENS = [1, 5, 17, 33, 203]  # the last sequence is a whole prefill


@pytest.mark.parametrize("mode", ["decode", "extend"])
@pytest.mark.parametrize("head_dim", [32, 64, 96, 128, 256])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(device, dtype, block_size, heads, head_dim, mode):
    num_heads, num_kv_heads = heads
    k_cache, v_cache, tables, lens = make_paged(SEQ_LENS, num_kv_heads, head_dim, block_size,
                                                dtype, device)
    g = torch.Generator().manual_seed(1)
    if mode == "decode":
        cu = None
        num_tokens = len(SEQ_LENS)
    else:
        cu = torch.tensor([0] + Q_LENS, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        num_tokens = int(cu[-1])
        cu = cu.to(device)
    query = torch.randn(num_tokens, num_heads, head_dim, generator=g).to(dtype).to(device)
    out = ops.paged_attention(query, k_cache, v_cache, tables, lens, cu)
    ref = ref_paged_attention(query, k_cache, v_cache, tables, lens, cu)
    assert out.dtype == dtype and out.shape == query.shape
    torch.testing.assert_close(out.float().cpu(), ref, **TOLERANCES[dtype])


def test_scale_and_out_buffer(device):
    k_cache, v_cache, tables, lens = make_paged([30, 7], 2, 64, 16, torch.float32, device)
    query = torch.randn(2, 4, 64, device=device)
    out = torch.full_like(query, float("nan"))
    res = ops.paged_attention(query, k_cache, v_cache, tables, lens, scale=0.3, out=out)
    assert res is out
    ref = ref_paged_attention(query, k_cache, v_cache, tables, lens, scale=0.3)
    torch.testing.assert_close(out.cpu(), ref, **TOLERANCES[torch.float32])


def test_long_context_split(device):
    # Long enough for the CUDA kernel to split the keys over several blocks.
    k_cache, v_cache, tables, lens = make_paged([4099, 1500], 3, 64, 16, torch.float32, device)
    query = torch.randn(2, 9, 64, device=device)
    out = ops.paged_attention(query, k_cache, v_cache, tables, lens)
    ref = ref_paged_attention(query, k_cache, v_cache, tables, lens)
    torch.testing.assert_close(out.cpu(), ref, **TOLERANCES[torch.float32])


def test_empty_query_and_zero_length_sequence(device):
    k_cache, v_cache, tables, lens = make_paged([5, 9], 1, 64, 8, torch.float32, device)
    lens = torch.tensor([5, 0], dtype=torch.int32, device=device)
    cu = torch.tensor([0, 2, 2], dtype=torch.int32, device=device)
    query = torch.randn(2, 2, 64, device=device)
    out = ops.paged_attention(query, k_cache, v_cache, tables, lens, cu)
    ref = ref_paged_attention(query, k_cache, v_cache, tables, lens, cu)
    torch.testing.assert_close(out.cpu(), ref, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 24, 256])
@pytest.mark.parametrize("heads", [(9, 3), (8, 1)])
def test_long_decode_splits_keys(dtype, block_size, heads):
    """CPU decode past 512 keys splits each sequence's keys into chunks merged by their
    log-sum-exp. Lengths at and around the chunk edges; a sequence's output is the same
    bit for bit alone and in a batch (the split depends on its own length only)."""
    num_heads, num_kv_heads = heads
    seq_lens = [2500, 1, 500, 504, 505, 512, 513, 1008, 1009, 1024, 1025, 3000]
    k_cache, v_cache, tables, lens = make_paged(seq_lens, num_kv_heads, 64, block_size, dtype,
                                                "cpu")
    g = torch.Generator().manual_seed(2)
    query = torch.randn(len(seq_lens), num_heads, 64, generator=g).to(dtype)
    out = ops.paged_attention(query, k_cache, v_cache, tables, lens)
    ref = ref_paged_attention(query, k_cache, v_cache, tables, lens)
    torch.testing.assert_close(out.float(), ref, **TOLERANCES[dtype])
    for i in (0, 4, 6, 11):
        alone = ops.paged_attention(query[i:i + 1], k_cache, v_cache, tables[i:i + 1],
                                    lens[i:i + 1])
        assert torch.equal(alone, out[i:i + 1])
