"""ponder.kernels' host side: a forward's metadata checked once on the host (what
ponder.ops checks per call on the device) and uploaded in one copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ponder import kernels

BLOCKS, BS = 8, 4


def good():
    # Two sequences: 3 new tokens of a 6-token one (blocks 2, 5), 1 of a 3-token one (block 0).
    return dict(slots=np.array([11, 20, 21, 2], np.int64),
                tables=np.array([[2, 5], [0, 0]], np.int32),
                seq_lens=np.array([6, 3], np.int32), q_lens=np.array([3, 1], np.int64))


CASES = [
    ("slot past the pool", dict(slots=np.array([11, 20, 32, 2])), "slot"),
    ("slot below -1", dict(slots=np.array([11, 20, -2, 2])), "slot"),
    ("slot twice", dict(slots=np.array([11, 20, 20, 2])), "same KV slot"),
    ("shorter than its queries", dict(seq_lens=np.array([2, 3], np.int32)), "shorter"),
    ("longer than its table", dict(seq_lens=np.array([9, 3], np.int32)), "block table"),
    ("block outside the pool", dict(tables=np.array([[2, 8], [0, 0]], np.int32)), "block"),
    ("negative block", dict(tables=np.array([[2, 5], [-1, 0]], np.int32)), "block"),
]


def test_good_metadata_passes():
    g = good()
    kernels.check_step(g["slots"], g["tables"], g["seq_lens"], g["q_lens"], BLOCKS, BS)
    # -1 slots (not written) may repeat; blocks past a sequence's length are not read.
    g.update(slots=np.array([-1, -1, 21, 2]), tables=np.array([[2, 5], [0, 99]], np.int32))
    kernels.check_step(g["slots"], g["tables"], g["seq_lens"], g["q_lens"], BLOCKS, BS)


@pytest.mark.parametrize("name,change,match", CASES, ids=[c[0] for c in CASES])
def test_bad_metadata_is_refused(name, change, match):
    g = {**good(), **change}
    with pytest.raises(ValueError, match=match):
        kernels.check_step(g["slots"], g["tables"], g["seq_lens"], g["q_lens"], BLOCKS, BS)


def test_to_device_keeps_values_dtypes_and_shapes(device):
    arrays = [np.arange(5, dtype=np.int64), None, np.array([[1, 2, 3]], np.int32),
              np.zeros(0, np.int64), np.array([0.5, 2.0, 7.0], np.float32)]
    got = kernels.to_device(arrays, torch.device(device))
    assert len(got) == len(arrays) and got[1] is None
    for a, t in zip(arrays, got, strict=True):
        if a is None:
            continue
        assert t.device.type == device and t.is_contiguous() and tuple(t.shape) == a.shape
        (back,) = kernels.to_host(t)
        assert back.dtype == a.dtype and np.array_equal(back, a)
