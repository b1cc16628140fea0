import pytest
import torch

from ponder import ops
from tests.reference import ref_copy_blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_matches_reference_exactly(device, dtype, block_size):
    g = torch.Generator().manual_seed(block_size)
    shape = (10, block_size, 3, 64)
    k_caches = [torch.randn(shape, generator=g).to(dtype) for _ in range(3)]
    v_caches = [torch.randn(shape, generator=g).to(dtype) for _ in range(3)]
    src = torch.tensor([0, 4, 4, 7])
    dst = torch.tensor([1, 2, 9, 3])
    k_ref, v_ref = ref_copy_blocks(k_caches, v_caches, src, dst)
    k_dev = [c.to(device) for c in k_caches]
    v_dev = [c.to(device) for c in v_caches]
    ops.copy_blocks(k_dev, v_dev, src.to(device), dst.to(device))
    for got, want in zip(k_dev + v_dev, k_ref + v_ref, strict=True):
        assert torch.equal(got.cpu(), want)


def test_accepts_lists_and_empty(device):
    k = [torch.arange(2 * 8 * 1 * 32, dtype=torch.float32).view(2, 8, 1, 32).to(device)]
    v = [k[0].clone() + 1]
    ops.copy_blocks(k, v, [1], [0])
    assert torch.equal(k[0][0], k[0][1]) and torch.equal(v[0][0], v[0][1])
    ops.copy_blocks(k, v, [], [])
