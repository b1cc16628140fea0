"""ponder's own entry points to its kernels: no checks, no host syncs.

``ponder.ops`` is the checked API for outside callers: on CUDA it reads index tensors back
to the host to validate them, one or more device syncs per call. The engine builds every
step's metadata itself from the KV cache manager, so it validates that metadata once per
step on the host (:func:`check_step`), uploads it in one copy (:func:`to_device`: pinned
memory, ``non_blocking``), and its model layers, sampler and PRM head call the kernels
through the functions here, which trust their arguments. The only device-to-host copies of
a step are its outputs (sampled tokens, their logprobs, PRM scores), read by
:func:`to_host`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ponder import _core

_ALIGN = 8  # every array of an upload starts at a multiple of the widest dtype


def stream(t: torch.Tensor) -> int:
    """The CUDA stream handle the kernels run on (0: the CPU)."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def to_device(arrays: Sequence[np.ndarray | None], device: torch.device
              ) -> list[torch.Tensor | None]:
    """Tensors on ``device`` holding ``arrays`` (their dtypes and shapes; None stays None).
    On the CPU they share the arrays' memory; on CUDA they are packed into one pinned
    buffer and uploaded with one ``non_blocking`` copy, which never waits for the device
    (the caching host allocator keeps the buffer until the copy has run)."""
    if device.type != "cuda":
        # (an empty array gets a fresh tensor: from_numpy gives it zero strides, which the
        # kernels' contiguity checks refuse)
        return [None if a is None else torch.from_numpy(np.ascontiguousarray(a)) if a.size
                else torch.empty(a.shape, dtype=torch.from_numpy(a).dtype) for a in arrays]
    offsets, total = [], 0
    for a in arrays:
        offsets.append(total)
        if a is not None:
            total += -(-a.nbytes // _ALIGN) * _ALIGN
    host = torch.empty(max(total, _ALIGN), dtype=torch.uint8, pin_memory=True)
    raw = host.numpy()
    for a, off in zip(arrays, offsets, strict=True):
        if a is not None:
            raw[off:off + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    dev = host.to(device, non_blocking=True)
    out: list[torch.Tensor | None] = []
    for a, off in zip(arrays, offsets, strict=True):
        if a is None:
            out.append(None)
            continue
        dtype = torch.from_numpy(a[:0].reshape(-1)).dtype
        out.append(dev[off:off + a.nbytes].view(dtype).view(a.shape))
    return out


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """A step's outputs as numpy arrays: on CUDA the step's one wait for the device (allowed
    under ``torch.cuda.set_sync_debug_mode``, which the GPU tests use to prove a step has no
    other sync)."""
    if not tensors or not tensors[0].is_cuda:
        return [t.numpy() for t in tensors]
    mode = torch.cuda.get_sync_debug_mode()
    if mode:
        torch.cuda.set_sync_debug_mode(0)
    try:
        return [t.cpu().numpy() for t in tensors]
    finally:
        if mode:
            torch.cuda.set_sync_debug_mode(mode)


def check_step(slots: np.ndarray, tables: np.ndarray, seq_lens: np.ndarray,
               q_lens: np.ndarray, num_blocks: int, block_size: int) -> None:
    """Validates a forward's metadata on the host before it is uploaded: each token's KV
    slot in the pool (``-1``: not written) and distinct, each sequence at least as long as
    its query tokens and within its block table, every block it reads in the pool. What
    ``ponder.ops`` checks per call on the device, once per step here."""
    live = slots[slots >= 0]
    if slots.size and (slots.min() < -1 or slots.max() >= num_blocks * block_size):
        raise ValueError(f"a KV slot is outside [-1, {num_blocks * block_size})")
    if np.unique(live).size != live.size:
        raise ValueError("two tokens of one forward write the same KV slot")
    if (seq_lens < q_lens).any():
        raise ValueError("a sequence is shorter than its query tokens")
    if (seq_lens > tables.shape[1] * block_size).any():
        raise ValueError("a sequence is longer than its block table")
    used = np.arange(tables.shape[1])[None, :] * block_size < seq_lens[:, None]
    blocks = tables[used]
    if blocks.size and (blocks.min() < 0 or blocks.max() >= num_blocks):
        raise ValueError(f"a block table holds a block outside [0, {num_blocks})")


def attention_plan(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int,
                   max_seq_len: int, decode: bool, device: torch.device
                   ) -> tuple[int, torch.Tensor | None]:
    """Split-KV for CUDA decode: (num_splits, the float32 workspace they need, or None). The
    same for every layer of a forward, so the engine plans once per step."""
    if device.type != "cuda" or not decode or num_tokens == 0 or max_seq_len <= 0:
        return 1, None
    sms = _core.cuda_num_sms(device.index or 0)
    splits = _core.paged_attention_num_splits(num_tokens, num_heads, num_kv_heads, max_seq_len,
                                              sms)
    if splits == 1:
        return 1, None
    size = _core.paged_attention_workspace_floats(num_tokens, num_heads, head_dim, splits)
    return splits, torch.empty(size, dtype=torch.float32, device=device)


def kv_append(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
              v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """``ponder.ops.paged_kv_append`` without its checks."""
    _core.paged_kv_append(key, value, k_cache, v_cache, slot_mapping, stream=stream(k_cache))


def attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              block_tables: torch.Tensor, seq_lens: torch.Tensor,
              cu_query_lens: torch.Tensor | None, scale: float, max_seq_len: int,
              num_splits: int = 1, workspace: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``ponder.ops.paged_attention`` without its checks, split-KV as planned by
    :func:`attention_plan`; into ``out`` when given."""
    if out is None:
        out = torch.empty_like(query)
    _core.paged_attention(query, k_cache, v_cache, block_tables, seq_lens, cu_query_lens, out,
                          float(scale), max_seq_len=max_seq_len, workspace=workspace,
                          num_splits=num_splits, stream=stream(query))
    return out


def copy_blocks(k_caches: list[torch.Tensor], v_caches: list[torch.Tensor],
                src: torch.Tensor, dst: torch.Tensor) -> None:
    """``ponder.ops.copy_blocks`` without its checks."""
    _core.copy_blocks(k_caches, v_caches, src, dst, stream=stream(k_caches[0]))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
           top_p: torch.Tensor, min_p: torch.Tensor, seeds: torch.Tensor,
           seq_ids: torch.Tensor, positions: torch.Tensor, num_logprobs: int):
    """``ponder.ops.sample`` without its parameter checks: (tokens, logprobs, top_ids,
    top_logprobs) on the logits' device."""
    n, dev = (logits.shape[0] if logits.dim() > 0 else 0), logits.device
    out = (torch.empty(n, dtype=torch.int64, device=dev),
           torch.empty(n, dtype=torch.float32, device=dev),
           torch.empty(n, num_logprobs, dtype=torch.int64, device=dev),
           torch.empty(n, num_logprobs, dtype=torch.float32, device=dev))
    _core.sample(logits, temperature, top_k, top_p, min_p, seeds, seq_ids, positions, *out,
                 num_logprobs=num_logprobs, stream=stream(logits))
    return out


def prm_head(hidden: torch.Tensor, rows: torch.Tensor, w2: torch.Tensor,
             b2: torch.Tensor | None, w1: torch.Tensor | None,
             b1: torch.Tensor | None) -> torch.Tensor:
    """``ponder.ops.prm_head`` without its index check: float32 scores per row. (Shapes
    and dtypes are still the binding's to report: sizes here are read defensively.)"""
    num_rows = rows.shape[0] if rows.dim() == 1 else 0
    out = torch.empty(num_rows, dtype=torch.float32, device=hidden.device)
    workspace = None
    if hidden.is_cuda and w1 is not None and w1.dim() == 2:
        workspace = torch.empty(num_rows * w1.shape[0], dtype=torch.float32,
                                device=hidden.device)
    _core.prm_head(hidden, rows, w2, b2, w1, b1, out, workspace=workspace,
                   stream=stream(hidden))
    return out
