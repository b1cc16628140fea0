"""Every kernel rejects bad input with a ValueError/TypeError that names the argument."""

import pytest
import torch

from ponder import ops

NB, BS, KVH, HD, H = 6, 16, 2, 64, 4


def attention_args(device="cpu", **over):
    args = dict(
        query=torch.randn(2, H, HD, device=device),
        k_cache=torch.randn(NB, BS, KVH, HD, device=device),
        v_cache=torch.randn(NB, BS, KVH, HD, device=device),
        block_tables=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([20, 5], dtype=torch.int32, device=device),
        cu_query_lens=None,
    )
    args.update(over)
    return args


ATTENTION_CASES = [
    ("query", TypeError, dict(query=[[1.0]])),
    ("query", TypeError, dict(query=torch.randn(2, H, HD).double())),
    ("query", ValueError, dict(query=torch.randn(2, H))),
    ("k_cache", TypeError, dict(k_cache=torch.randn(NB, BS, KVH, HD).half())),
    ("k_cache", ValueError, dict(k_cache=torch.randn(NB, BS, KVH, 32))),
    ("num_kv_heads", ValueError, dict(k_cache=torch.randn(NB, BS, 3, HD),
                                      v_cache=torch.randn(NB, BS, 3, HD))),
    ("v_cache", ValueError, dict(v_cache=torch.randn(NB, BS, KVH, HD + 1))),
    ("query", ValueError, dict(query=torch.randn(2, HD, H).transpose(1, 2))),
    ("k_cache", ValueError, dict(k_cache=torch.randn(NB, KVH, BS, HD).transpose(1, 2))),
    ("block_tables", TypeError, dict(block_tables=torch.tensor([[0, 1], [2, 3]]))),
    ("block_tables", ValueError, dict(block_tables=torch.tensor([[0, NB], [2, 3]],
                                                                dtype=torch.int32))),
    ("block_tables", ValueError, dict(block_tables=torch.tensor([[0, -1], [2, 3]],
                                                                dtype=torch.int32))),
    ("seq_lens", TypeError, dict(seq_lens=torch.tensor([20, 5]))),
    ("seq_lens", ValueError, dict(seq_lens=torch.tensor([33, 5], dtype=torch.int32))),
    ("seq_lens", ValueError, dict(seq_lens=torch.tensor([20, 5, 1], dtype=torch.int32))),
    ("seq_lens", ValueError, dict(seq_lens=torch.tensor([0, 5], dtype=torch.int32))),
    ("batch", ValueError, dict(query=torch.randn(3, H, HD))),
    ("cu_query_lens", ValueError, dict(cu_query_lens=torch.tensor([0, 1], dtype=torch.int32))),
    ("cu_query_lens", ValueError, dict(cu_query_lens=torch.tensor([0, 2, 1], dtype=torch.int32))),
    ("cu_query_lens", ValueError, dict(cu_query_lens=torch.tensor([0, 1, 3], dtype=torch.int32))),
    ("cu_query_lens", TypeError, dict(cu_query_lens=torch.tensor([0, 1, 2]))),
    ("seq_lens", ValueError, dict(query=torch.randn(8, H, HD),
                                  cu_query_lens=torch.tensor([0, 2, 8], dtype=torch.int32))),
    ("block_size", ValueError, dict(k_cache=torch.randn(1, 512, KVH, HD),
                                    v_cache=torch.randn(1, 512, KVH, HD))),
]


@pytest.mark.parametrize("name,exc,over", ATTENTION_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ATTENTION_CASES)])
def test_paged_attention_rejects(name, exc, over):
    with pytest.raises(exc, match=name):
        ops.paged_attention(**attention_args(**over))


def test_paged_attention_rejects_bad_out_and_devices():
    args = attention_args()
    with pytest.raises(ValueError, match="out"):
        ops.paged_attention(**args, out=torch.empty(2, H, HD + 1))
    with pytest.raises(TypeError, match="out"):
        ops.paged_attention(**args, out=torch.empty(2, H, HD, dtype=torch.float16))
    with pytest.raises(ValueError, match="device"):
        ops.paged_attention(**attention_args(seq_lens=torch.tensor([20, 5], dtype=torch.int32,
                                                                   device="meta")))


def append_args(**over):
    args = dict(key=torch.randn(3, KVH, HD), value=torch.randn(3, KVH, HD),
                k_cache=torch.zeros(NB, BS, KVH, HD), v_cache=torch.zeros(NB, BS, KVH, HD),
                slot_mapping=torch.tensor([0, 5, -1]))
    args.update(over)
    return args


APPEND_CASES = [
    ("key", TypeError, dict(key=torch.randn(3, KVH, HD).half())),
    ("key", ValueError, dict(key=torch.randn(3, KVH + 1, HD))),
    ("value", ValueError, dict(value=torch.randn(2, KVH, HD))),
    ("v_cache", ValueError, dict(v_cache=torch.zeros(NB + 1, BS, KVH, HD))),
    ("slot_mapping", TypeError, dict(slot_mapping=torch.tensor([0, 5, -1], dtype=torch.int32))),
    ("slot_mapping", ValueError, dict(slot_mapping=torch.tensor([0, 5]))),
    ("slot_mapping", ValueError, dict(slot_mapping=torch.tensor([0, NB * BS, 1]))),
    ("slot_mapping", ValueError, dict(slot_mapping=torch.tensor([0, -2, 1]))),
    ("k_cache", ValueError, dict(k_cache=torch.zeros(NB, KVH, BS, HD).transpose(1, 2))),
    ("k_cache", TypeError, dict(k_cache="cache")),
]


@pytest.mark.parametrize("name,exc,over", APPEND_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(APPEND_CASES)])
def test_paged_kv_append_rejects(name, exc, over):
    with pytest.raises(exc, match=name):
        ops.paged_kv_append(**append_args(**over))


def test_paged_kv_append_writes_nothing_on_error():
    args = append_args(slot_mapping=torch.tensor([0, 5, NB * BS]))
    with pytest.raises(ValueError):
        ops.paged_kv_append(**args)
    assert not args["k_cache"].any()


COPY_CASES = [
    ("src", ValueError, dict(src=[NB], dst=[0])),
    ("dst", ValueError, dict(src=[0], dst=[-1])),
    ("dst", ValueError, dict(src=[0, 1], dst=[2, 2])),
    ("src", ValueError, dict(src=[0, 2], dst=[2, 3])),
    ("dst", ValueError, dict(src=[0, 1], dst=[2])),
    ("src", TypeError, dict(src=torch.tensor([0], dtype=torch.int32), dst=[1])),
    ("v_caches", ValueError, dict(v_caches=[])),
    ("v_caches\\[0\\]", ValueError, dict(v_caches=[torch.zeros(NB, BS, KVH, HD + 1)])),
    ("k_caches", ValueError, dict(k_caches=[], v_caches=[])),
]


@pytest.mark.parametrize("name,exc,over", COPY_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(COPY_CASES)])
def test_copy_blocks_rejects(name, exc, over):
    args = dict(k_caches=[torch.zeros(NB, BS, KVH, HD)], v_caches=[torch.zeros(NB, BS, KVH, HD)],
                src=[0], dst=[1])
    args.update(over)
    with pytest.raises(exc, match=name):
        ops.copy_blocks(**args)
