import pytest
import torch

from ponder import ops
from tests.reference import ref_paged_kv_append


@pytest.mark.parametrize("num_tokens", [1, 7, 61])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_reference_exactly(device, dtype, block_size, num_tokens):
    g = torch.Generator().manual_seed(num_tokens)
    num_blocks, num_kv_heads, head_dim = 12, 3, 64
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g).to(dtype)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g).to(dtype)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[::5] = -1  # skipped tokens
    k_ref, v_ref = ref_paged_kv_append(key, value, k_cache, v_cache, slots)
    k_dev, v_dev = k_cache.to(device), v_cache.to(device)
    ops.paged_kv_append(key.to(device), value.to(device), k_dev, v_dev, slots.to(device))
    assert torch.equal(k_dev.cpu(), k_ref)
    assert torch.equal(v_dev.cpu(), v_ref)


def test_odd_row_width(device):
    # num_kv_heads * head_dim * 2 bytes is not a multiple of 16: the narrow copy path.
    k_cache = torch.zeros(4, 8, 1, 36, dtype=torch.float16, device=device)
    v_cache = torch.zeros_like(k_cache)
    key = torch.randn(3, 1, 36).half().to(device)
    value = torch.randn(3, 1, 36).half().to(device)
    slots = torch.tensor([0, 9, 31], device=device)
    ops.paged_kv_append(key, value, k_cache, v_cache, slots)
    k_ref, v_ref = ref_paged_kv_append(key.cpu(), value.cpu(), torch.zeros(4, 8, 1, 36).half(),
                                       torch.zeros(4, 8, 1, 36).half(), slots.cpu())
    assert torch.equal(k_cache.cpu(), k_ref) and torch.equal(v_cache.cpu(), v_ref)
