"""Engine's constructor arguments, checked before any weights load, so that a typo costs
nothing and every mistake is an exception that names the argument. Whether the model and
PRM paths exist is the loader's to say."""

from __future__ import annotations

import os

import torch

from ponder._validate import INT32_MAX, check_bool, check_int, check_seed
from ponder.engine.runner import resolve_dtype
from ponder.prm.formats import FORMATS

# The largest KV block the paged-attention kernels take (kPagedAttentionMaxBlockSize in
# csrc/include/ponder/paged_attention.h); any size up to it works, powers of two or not.
MAX_BLOCK_SIZE = 256


def check_engine_args(model, prm, prm_format, dtype, device, kv_blocks, seed, block_size,
                      max_num_batched_tokens, max_num_seqs, enable_prefix_cache,
                      prm_kv_blocks, prm_incremental) -> None:
    """Raises TypeError (a wrong type) or ValueError (a value out of range) naming the first
    bad argument of ``Engine(...)``; see Engine for their meaning."""
    _check_path("model", model)
    if callable(prm):
        raise TypeError("prm must be a path to a PRM checkpoint or 'self', got a callable: "
                        "a verifier callable goes to search(..., prm=fn)")
    if prm is not None:
        _check_path("prm", prm)
    if prm_format is not None:
        if not isinstance(prm_format, str):
            raise TypeError(f"prm_format must be None or a str, got {type(prm_format).__name__}")
        if prm_format not in FORMATS:
            raise ValueError(f"prm_format must be one of {sorted(FORMATS)}, got {prm_format!r}")
        if prm in (None, "self") and prm_format != "self-verify":
            raise ValueError(f"prm_format {prm_format!r} needs a PRM checkpoint (prm=PATH); "
                             f"only 'self-verify' runs on the policy itself")
    if not isinstance(dtype, (str, torch.dtype)):
        raise TypeError(f"dtype must be a str or a torch.dtype, got {type(dtype).__name__}")
    resolve_dtype(dtype)
    _check_device(device)
    for name, blocks in (("kv_blocks", kv_blocks), ("prm_kv_blocks", prm_kv_blocks)):
        if blocks is not None:
            check_int(name, blocks, 1, INT32_MAX)  # the block pool counts in int32
    check_seed("seed", seed, allow_none=False)
    check_int("block_size", block_size, 1, MAX_BLOCK_SIZE)
    check_int("max_num_batched_tokens", max_num_batched_tokens, 1)
    check_int("max_num_seqs", max_num_seqs, 1)
    check_bool("enable_prefix_cache", enable_prefix_cache)
    check_bool("prm_incremental", prm_incremental)


def _check_path(name: str, path) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    if not os.fspath(path):
        raise ValueError(f"{name} must be a non-empty path")


def _check_device(device) -> None:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or a torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'cpu' or 'cuda' (with an optional ':index'), got "
                         f"{device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda":
        from ponder import cuda_available  # ponder imports this module: import late

        if not (torch.cuda.is_available() and cuda_available()):
            raise ValueError(f"device={device!r}, but this build of ponder or torch sees no "
                             f"CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}, but torch sees "
                             f"{torch.cuda.device_count()} CUDA device(s)")
