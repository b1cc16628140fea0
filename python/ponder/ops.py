"""Kernels on the paged KV cache: validate, allocate outputs, dispatch by device.

The compiled kernels live in ``ponder._core`` and take tensors through DLPack, so they work
with any torch >= 2.4. Shapes follow ``docs/architecture.md``: per layer, ``k_cache`` and
``v_cache`` are ``[num_blocks, block_size, num_kv_heads, head_dim]`` and the slot of token
``t`` of a sequence is ``block_table[t // block_size] * block_size + t % block_size``.

Each op is also a registered torch operator, ``torch.ops.ponder.<name>``, with a fake
(shape-only) kernel, so a model that calls it traces under ``torch.compile`` and
``torch.export`` and shows up by name in profiles. The functions here are the same kernels
without the dispatcher's few microseconds per call; the engine calls them directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ponder import _core, kernels

__all__ = ["DecodeLayers", "SampleOutput", "copy_blocks", "paged_attention", "paged_kv_append",
           "prm_head", "sample"]


def _tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _same_device(ref: torch.Tensor, ref_name: str, **tensors: torch.Tensor | None) -> None:
    if ref.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{ref_name} must be a CPU or CUDA tensor, got device {ref.device}")
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on device {t.device} but {ref_name} is on {ref.device}")


def _check_range(t: torch.Tensor, name: str, low: int, high: int,
                 error: type[Exception] = ValueError) -> None:
    """On CUDA the binding cannot read indices; check them here (one device sync)."""
    if t.numel() == 0:
        return
    lo, hi = torch.aminmax(t)
    lo, hi = int(lo), int(hi)
    if lo < low or hi >= high:
        bad = lo if lo < low else hi
        raise error(f"{name} holds {bad}, outside [{low}, {high})")


def paged_kv_append(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new key/value rows into the paged caches, in place.

    Parameters
    ----------
    key, value : torch.Tensor
        ``[num_tokens, num_kv_heads, head_dim]``, same dtype as the caches.
    k_cache, v_cache : torch.Tensor
        ``[num_blocks, block_size, num_kv_heads, head_dim]``; float32, bfloat16 or float16.
    slot_mapping : torch.Tensor
        int64 ``[num_tokens]``: the slot of each token, distinct; ``-1`` skips the token.

    Examples
    --------
    >>> import torch, ponder.ops as ops
    >>> k_cache = torch.zeros(4, 16, 2, 64); v_cache = torch.zeros_like(k_cache)
    >>> key = torch.randn(3, 2, 64); value = torch.randn(3, 2, 64)
    >>> ops.paged_kv_append(key, value, k_cache, v_cache, torch.tensor([16, 17, -1]))
    >>> bool((k_cache[1, 0] == key[0]).all())
    True
    """
    for x, n in ((key, "key"), (value, "value"), (k_cache, "k_cache"), (v_cache, "v_cache"),
                 (slot_mapping, "slot_mapping")):
        _tensor(x, n)
    _same_device(k_cache, "k_cache", key=key, value=value, v_cache=v_cache,
                 slot_mapping=slot_mapping)
    if k_cache.is_cuda and k_cache.dim() == 4:
        _check_range(slot_mapping, "slot_mapping", -1, k_cache.shape[0] * k_cache.shape[1])
        live = slot_mapping[slot_mapping >= 0]
        if torch.unique(live).numel() != live.numel():
            raise ValueError("slot_mapping repeats a slot")
    kernels.kv_append(key, value, k_cache, v_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_query_lens: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    max_seq_len: int | None = None,
) -> torch.Tensor:
    """Causal attention of packed query tokens over a paged KV cache.

    Parameters
    ----------
    query : torch.Tensor
        ``[num_tokens, num_heads, head_dim]``: the query tokens of all sequences, packed.
    k_cache, v_cache : torch.Tensor
        ``[num_blocks, block_size, num_kv_heads, head_dim]``; ``num_heads`` must be a
        multiple of ``num_kv_heads`` (grouped-query attention). Same dtype as ``query``.
    block_tables : torch.Tensor
        int32 ``[batch, max_blocks_per_seq]``.
    seq_lens : torch.Tensor
        int32 ``[batch]``: each sequence's length with its new tokens already appended.
    cu_query_lens : torch.Tensor, optional
        int32 ``[batch + 1]`` prefix sums of the query lengths. ``None`` means decode: one
        query token per sequence. A sequence's query tokens are its last ``q_len`` positions
        and attend causally.
    scale : float, optional
        Softmax scale, ``1 / sqrt(head_dim)`` by default.
    out : torch.Tensor, optional
        Output buffer shaped like ``query``.
    max_seq_len : int, optional
        CUDA only: the longest sequence, to size split-KV work without a device sync.

    Returns
    -------
    torch.Tensor
        ``[num_tokens, num_heads, head_dim]`` in the dtype of ``query``.

    Examples
    --------
    >>> import torch, ponder.ops as ops
    >>> k = torch.randn(2, 16, 1, 64); v = torch.randn(2, 16, 1, 64)
    >>> q = torch.randn(1, 4, 64)   # one decode token, 4 heads sharing 1 KV head
    >>> out = ops.paged_attention(q, k, v, torch.tensor([[1, 0]], dtype=torch.int32),
    ...                           torch.tensor([20], dtype=torch.int32))
    >>> out.shape
    torch.Size([1, 4, 64])
    """
    for x, n in ((query, "query"), (k_cache, "k_cache"), (v_cache, "v_cache"),
                 (block_tables, "block_tables"), (seq_lens, "seq_lens")):
        _tensor(x, n)
    if cu_query_lens is not None:
        _tensor(cu_query_lens, "cu_query_lens")
    if out is not None:
        _tensor(out, "out")
    _same_device(query, "query", k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
                 seq_lens=seq_lens, cu_query_lens=cu_query_lens, out=out)
    if query.dim() != 3:
        raise ValueError(f"query must be [num_tokens, num_heads, head_dim], got "
                         f"{list(query.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] > 0 else 1.0
    workspace, num_splits = None, 1
    if query.is_cuda:
        workspace, num_splits, max_seq_len = _cuda_prepare(
            query, k_cache, block_tables, seq_lens, cu_query_lens, max_seq_len)
    return kernels.attention(query, k_cache, v_cache, block_tables, seq_lens, cu_query_lens,
                             scale, max_seq_len or 0, num_splits, workspace, out=out)


def _cuda_prepare(query, k_cache, block_tables, seq_lens, cu_query_lens, max_seq_len):
    if k_cache.dim() != 4 or block_tables.dim() != 2 or seq_lens.dim() != 1:
        return None, 1, max_seq_len  # the binding reports the shape error
    batch, max_blocks = block_tables.shape
    num_blocks, block_size = k_cache.shape[0], k_cache.shape[1]
    if query.shape[0] == 0 or batch == 0:
        return None, 1, max_seq_len or 0
    # Value checks only on well-formed index tensors; the binding reports everything else.
    cu_ok = cu_query_lens is None or (cu_query_lens.dtype == torch.int32
                                      and cu_query_lens.dim() == 1
                                      and cu_query_lens.numel() == batch + 1)
    if seq_lens.dtype == torch.int32 and seq_lens.dim() == 1 and seq_lens.numel() == batch \
            and cu_ok:
        if cu_query_lens is None:
            q_lens = torch.ones_like(seq_lens, dtype=torch.int64)
        else:
            if int(cu_query_lens[0]) != 0 or int(cu_query_lens[-1]) != query.shape[0]:
                raise ValueError("cu_query_lens must start at 0 and end at num_tokens")
            q_lens = cu_query_lens.long().diff()
            _check_range(q_lens, "cu_query_lens differences", 0, 2**31)
        if bool((seq_lens.long() < q_lens).any()):
            raise ValueError("seq_lens is shorter than a sequence's query tokens")
        _check_range(seq_lens, "seq_lens", 0, max_blocks * block_size + 1)
        if block_tables.dtype == torch.int32:
            used = torch.arange(max_blocks, device=seq_lens.device)[None, :] * block_size
            live = block_tables[used < seq_lens[:, None].to(used.dtype)]
            _check_range(live, "block_tables", 0, num_blocks)
        if max_seq_len is None:
            max_seq_len = int(seq_lens.max())
    if max_seq_len is None:
        return None, 1, 0
    num_heads, num_kv_heads = query.shape[1], k_cache.shape[2]
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        return None, 1, max_seq_len
    splits, workspace = kernels.attention_plan(query.shape[0], num_heads, num_kv_heads,
                                               query.shape[2], max_seq_len,
                                               cu_query_lens is None, query.device)
    return workspace, splits, max_seq_len


def copy_blocks(
    k_caches: Sequence[torch.Tensor],
    v_caches: Sequence[torch.Tensor],
    src,
    dst,
) -> None:
    """Copy whole blocks ``src[i] -> dst[i]`` in every layer's K and V cache, in place.

    Applies the copy-on-write pairs returned by ``KvCacheManager.append``.

    Parameters
    ----------
    k_caches, v_caches : sequence of torch.Tensor
        One ``[num_blocks, block_size, num_kv_heads, head_dim]`` tensor per layer.
    src, dst : torch.Tensor or sequence of int
        int64 ``[num_pairs]`` block ids. ``dst`` ids are distinct and none is also a source.
    """
    k_caches, v_caches = list(k_caches), list(v_caches)
    for i, c in enumerate(k_caches):
        _tensor(c, f"k_caches[{i}]")
    for i, c in enumerate(v_caches):
        _tensor(c, f"v_caches[{i}]")
    device = k_caches[0].device if k_caches else torch.device("cpu")
    src = torch.as_tensor(src, dtype=torch.int64, device=device) if not isinstance(
        src, torch.Tensor) else src
    dst = torch.as_tensor(dst, dtype=torch.int64, device=device) if not isinstance(
        dst, torch.Tensor) else dst
    if k_caches:
        _same_device(k_caches[0], "k_caches[0]", src=src, dst=dst,
                     **{f"k_caches[{i}]": c for i, c in enumerate(k_caches)},
                     **{f"v_caches[{i}]": c for i, c in enumerate(v_caches)})
    if device.type == "cuda" and k_caches[0].dim() == 4:
        n = k_caches[0].shape[0]
        _check_range(src, "src", 0, n)
        _check_range(dst, "dst", 0, n)
        if dst.numel() and (torch.unique(dst).numel() != dst.numel()
                            or bool(torch.isin(src, dst).any())):
            raise ValueError("dst ids must be distinct and none may also be a src")
    _core.copy_blocks(k_caches, v_caches, src, dst,
                      stream=kernels.stream(k_caches[0]) if k_caches else 0)


class SampleOutput(NamedTuple):
    """What :func:`sample` returns, one entry (or row) per row of ``logits``."""

    tokens: torch.Tensor  #: int64 ``[num_rows]``
    logprobs: torch.Tensor  #: float32 ``[num_rows]``, raw log-softmax at ``tokens``
    top_ids: torch.Tensor  #: int64 ``[num_rows, num_logprobs]``
    top_logprobs: torch.Tensor  #: float32 ``[num_rows, num_logprobs]``, descending


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    seq_ids: torch.Tensor,
    positions: torch.Tensor,
    *,
    num_logprobs: int = 0,
) -> SampleOutput:
    """Sample one token per row, reproducibly, with temperature, top-k, top-p and min-p.

    Filters apply in Hugging Face transformers' order (temperature, top-k, top-p, min-p) with
    threshold semantics, so equal logits are kept or dropped together and a row's result never
    depends on a sort order: top-k keeps every token whose scaled logit is >= the k-th largest
    (ties at the threshold may keep more than k); top-p keeps a token when the probability mass
    of the tokens strictly more probable than it is < ``top_p`` (so at least the most probable
    token); min-p keeps tokens with probability >= ``min_p`` times the largest. The token is
    then drawn by inverse CDF over the kept tokens in vocab order, with one uniform from
    Philox4x32-10 keyed by ``seeds`` at counter ``(seq_ids, positions)``: a row's token depends
    only on its own logits and parameters, never on the rest of the batch, and CPU and CUDA
    draw the same uniform.

    Parameters
    ----------
    logits : torch.Tensor
        ``[num_rows, vocab]``, float32, bfloat16 or float16, contiguous, CPU or CUDA. Finite or
        ``-inf``, with at least one finite value per row.
    temperature : torch.Tensor
        float32 ``[num_rows]``, >= 0. ``0`` is greedy: the first index of the largest logit
        (like ``torch.argmax``), and the other filters are ignored.
    top_k : torch.Tensor
        int32 ``[num_rows]``; ``<= 0`` disables.
    top_p : torch.Tensor
        float32 ``[num_rows]`` in ``(0, 1]``; ``1`` disables.
    min_p : torch.Tensor
        float32 ``[num_rows]`` in ``[0, 1]``; ``0`` disables.
    seeds, seq_ids, positions : torch.Tensor
        int64 ``[num_rows]``: the RNG key and counter of each row's draw.
    num_logprobs : int, optional
        How many of the highest raw log-probabilities to return per row, in ``[0, vocab]``.
        On CUDA each costs one pass over the row; meant for the few (<= 20) serving asks for.

    Returns
    -------
    SampleOutput
        ``tokens`` int64 ``[num_rows]``; ``logprobs`` float32 ``[num_rows]``, the
        log-softmax of the raw logits (before temperature and filters) at each token;
        ``top_ids`` int64 and ``top_logprobs`` float32 ``[num_rows, num_logprobs]``, highest
        first, ties to the lower id.

    Examples
    --------
    >>> import torch, ponder.ops as ops
    >>> logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    >>> n = logits.shape[0]
    >>> out = ops.sample(logits, torch.tensor([0.0, 1.0]), torch.zeros(n, dtype=torch.int32),
    ...                  torch.ones(n), torch.zeros(n), torch.zeros(n, dtype=torch.int64),
    ...                  torch.arange(n), torch.zeros(n, dtype=torch.int64), num_logprobs=2)
    >>> int(out.tokens[0]), out.top_ids[0].tolist()
    (1, [1, 2])
    """
    named = (("logits", logits), ("temperature", temperature), ("top_k", top_k),
             ("top_p", top_p), ("min_p", min_p), ("seeds", seeds), ("seq_ids", seq_ids),
             ("positions", positions))
    for n, x in named:
        _tensor(x, n)
    _same_device(logits, "logits", **dict(named[1:]))
    if isinstance(num_logprobs, bool) or not isinstance(num_logprobs, int):
        raise TypeError(f"num_logprobs must be an int, got {type(num_logprobs).__name__}")
    if num_logprobs < 0:
        raise ValueError(f"num_logprobs must be >= 0, got {num_logprobs}")
    if logits.is_cuda:
        _check_sampling_params(logits.shape[0] if logits.dim() > 0 else 0, temperature, top_p,
                               min_p)
    return SampleOutput(*kernels.sample(logits, temperature, top_k, top_p, min_p, seeds,
                                        seq_ids, positions, num_logprobs))


def _check_sampling_params(num_rows, temperature, top_p, min_p):
    """On CUDA the binding cannot read the parameters; check them here (one device sync)."""
    checks = [(name, t, bad) for name, t, bad in (
        ("temperature", temperature, lambda t: ~(torch.isfinite(t) & (t >= 0))),
        ("top_p", top_p, lambda t: ~((t > 0) & (t <= 1))),
        ("min_p", min_p, lambda t: ~((t >= 0) & (t <= 1))),
    ) if t.dtype == torch.float32 and t.shape == (num_rows,) and num_rows > 0]
    if not checks:
        return  # the binding reports dtype and shape errors
    flags = torch.stack([bad(t).any() for _, t, bad in checks]).tolist()
    ranges = {"temperature": "[0, inf)", "top_p": "(0, 1]", "min_p": "[0, 1]"}
    for (name, _, _), flag in zip(checks, flags, strict=True):
        if flag:
            raise ValueError(f"{name} holds a value outside {ranges[name]}")


_LINEAR_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``, like ``torch.nn.functional.linear``.

    On the CPU (float32, bfloat16, float16, contiguous), ponder's multi-threaded kernel runs
    it: the weights are streamed once for all rows of x, and every row is summed in the same
    order whatever the rows beside it (batch invariance: a row's output never depends on
    how many rows there are, which torch's GEMM does not promise). Elsewhere torch's.

    Parameters
    ----------
    x : torch.Tensor
        ``[..., in_features]``.
    weight : torch.Tensor
        ``[out_features, in_features]``, same dtype as ``x``.
    bias : torch.Tensor, optional
        ``[out_features]``.

    Returns
    -------
    torch.Tensor
        ``[..., out_features]``.
    """
    rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    if (x.device.type != "cpu" or rows == 0
            or x.dtype not in _LINEAR_DTYPES or weight.dtype != x.dtype
            or (bias is not None and bias.dtype != x.dtype)
            or not (x.is_contiguous() and weight.is_contiguous())):
        return torch.nn.functional.linear(x, weight, bias)
    x2 = x.reshape(rows, x.shape[-1])
    out = torch.empty(rows, weight.shape[0], dtype=x.dtype)
    _core.linear(x2, weight, bias, out)
    return out.view(*x.shape[:-1], weight.shape[0])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension as transformers computes it (fp32 statistics).

    With ``residual`` (same shape as ``x``), first ``residual += x`` in place, then normalizes
    the sum: the residual add and the norm of a pre-norm decoder layer in one call.

    Parameters
    ----------
    x : torch.Tensor
        ``[num_tokens, hidden]``.
    weight : torch.Tensor
        ``[hidden]``, same dtype.
    """
    if x.device.type == "cpu" and x.dim() == 2 and x.is_contiguous():
        out = torch.empty_like(x)
        _core.rms_norm(x, weight, float(eps), residual, out)
        return out
    if residual is not None:
        residual.add_(x)
        x = residual
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           positions: torch.Tensor) -> None:
    """Rotary embedding (rotate-half layout) applied in place to ``q`` ``[num_tokens,
    num_heads, head_dim]`` and ``k`` ``[num_tokens, num_kv_heads, head_dim]``, with
    ``cos``/``sin`` tables ``[max_positions, head_dim]`` indexed by int64 ``positions``."""
    if q.device.type == "cpu" and q.is_contiguous() and k.is_contiguous():
        _core.rotary(q, k, cos, sin, positions)
        return
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]
    for x in (q, k):
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        x.copy_(x * c + rot * s)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` ``[num_tokens, 2 * inter]``."""
    if gate_up.device.type == "cpu" and gate_up.dim() == 2 and gate_up.is_contiguous():
        out = torch.empty(gate_up.shape[0], gate_up.shape[1] // 2, dtype=gate_up.dtype)
        _core.silu_and_mul(gate_up, out)
        return out
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def prm_head(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor | None = None,
    w1: torch.Tensor | None = None,
    b1: torch.Tensor | None = None,
) -> torch.Tensor:
    """Process-reward scores of selected token rows of a packed forward, in one call.

    For each ``r``, with ``x = hidden[rows[r]]``::

        h = relu(x @ w1.T + b1)  if w1 is given, else x
        logits = h @ w2.T + b2
        out[r] = sigmoid(logits[0])            if w2 has 1 row  (a value head, e.g. Skywork)
                 softmax(logits)[1]            if w2 has 2 rows (= sigmoid(l1 - l0))

    Two rows cover Qwen2.5-Math-PRM's ``score`` head (``Linear(H, H), ReLU, Linear(H, 2)``:
    pass both linears) and generative PRMs that read two LM-head rows: pass
    ``lm_head.weight[[neg_id, pos_id]]`` as ``w2``. Products accumulate in fp32 and ``h``
    stays fp32 between the layers (a bf16 transformers module rounds it to bf16 there), so the
    result matches the head run in fp32 on the widened weights.

    On the CPU the first layer's weight is read once for all rows (threads split its
    outputs), so scoring many rows costs about as much memory traffic as scoring one.

    Parameters
    ----------
    hidden : torch.Tensor
        ``[num_tokens, hidden_size]``, float32, bfloat16 or float16: the last hidden states
        (after the final norm). Rows may be strided (e.g. a slice of a larger buffer) and are
        read in place; if the last dimension is not contiguous, ``hidden`` is first copied
        with ``.contiguous()``.
    rows : torch.Tensor
        int64 ``[num_rows]``: the token rows to score, each in ``[0, num_tokens)`` (no
        negative indexing); may repeat; ``num_rows`` may be 0.
    w2 : torch.Tensor
        ``[num_classes, inner_size]``, ``num_classes`` 1 or 2; ``inner_size`` is
        ``w1.shape[0]``, or ``hidden_size`` without ``w1``. Same dtype as ``hidden``.
    b2 : torch.Tensor, optional
        ``[num_classes]``.
    w1 : torch.Tensor, optional
        ``[inner_size, hidden_size]``: a first layer, followed by ReLU.
    b1 : torch.Tensor, optional
        ``[inner_size]``, only with ``w1``.

    Returns
    -------
    torch.Tensor
        float32 ``[num_rows]`` on ``hidden``'s device, each in ``[0, 1]``.

    Raises
    ------
    TypeError
        An argument is not a tensor, or has the wrong dtype (weights must match ``hidden``,
        ``rows`` must be int64).
    ValueError
        Wrong number of dimensions or shape, ``w2`` with other than 1 or 2 rows, ``b1``
        without ``w1``, tensors on different devices, non-contiguous weights.
    IndexError
        A row index outside ``[0, num_tokens)``.

    Examples
    --------
    >>> import torch, ponder.ops as ops
    >>> hidden = torch.randn(10, 64)              # a packed forward of 10 tokens
    >>> w1, b1 = torch.randn(64, 64) / 8, torch.zeros(64)
    >>> w2 = torch.randn(2, 64) / 8               # Qwen-PRM-style 2-class head
    >>> scores = ops.prm_head(hidden, torch.tensor([3, 9]), w2, w1=w1, b1=b1)
    >>> want = torch.softmax(torch.relu(hidden[[3, 9]] @ w1.T + b1) @ w2.T, -1)[:, 1]
    >>> bool(torch.allclose(scores, want, atol=1e-5))
    True
    """
    for n, x in (("hidden", hidden), ("rows", rows), ("w2", w2)):
        _tensor(x, n)
    for n, x in (("b2", b2), ("w1", w1), ("b1", b1)):
        if x is not None:
            _tensor(x, n)
    _same_device(hidden, "hidden", rows=rows, w2=w2, b2=b2, w1=w1, b1=b1)
    if hidden.dim() == 2 and hidden.shape[1] > 1 and hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    if hidden.is_cuda and hidden.dim() == 2 and rows.dim() == 1 and rows.dtype == torch.int64:
        _check_range(rows, "rows", 0, hidden.shape[0], error=IndexError)
    return kernels.prm_head(hidden, rows, w2, b2, w1, b1)


class DecodeLayers:
    """A Llama-family decoder stack run in one call per decode step (CPU).

    Per layer: RMSNorm (adding the previous layer's output to the residual stream first),
    the fused qkv projection, optional per-head q/k RMSNorm (Qwen3), rotary, KV append,
    paged attention, o projection, RMSNorm (+ residual), gate/up projection, SiLU-and-mul,
    down projection; then the final RMSNorm. It runs the kernels of :func:`rms_norm`,
    :func:`linear`, :func:`rotary`, :func:`paged_kv_append`, :func:`paged_attention` and
    :func:`silu_and_mul` in that order on reused scratch buffers, so its output is bitwise
    that of calling them one by one, without the per-call overhead. The weights are checked
    once here and kept alive by this object.

    Parameters
    ----------
    layers : sequence of sequences
        Per layer, 12 entries, a tensor or ``None`` where marked optional:
        ``input_norm`` ``[hidden]``, ``qkv`` ``[(num_heads + 2 * num_kv_heads) * head_dim,
        hidden]`` (q rows, then k, then v), ``qkv_bias`` (optional), ``q_norm``, ``k_norm``
        ``[head_dim]`` (optional, together), ``o`` ``[hidden, num_heads * head_dim]``,
        ``o_bias`` (optional), ``post_norm`` ``[hidden]``, ``gate_up`` ``[2 * inter, hidden]``
        (gate rows, then up), ``gate_up_bias`` (optional), ``down`` ``[hidden, inter]``,
        ``down_bias`` (optional). All contiguous CPU tensors of one float dtype.
    final_norm : torch.Tensor
        ``[hidden]``.
    eps : float
        RMSNorm epsilon.
    scale : float
        Softmax scale of attention.
    num_heads, num_kv_heads, head_dim : int

    Examples
    --------
    See ``tests/kernels/test_decode_layers.py``; :class:`ponder.models.llama.CausalLM` builds
    one from its modules for CPU decode steps.
    """

    MAX_TOKENS = _core.LINEAR_MAX_ROWS

    def __init__(self, layers, final_norm: torch.Tensor, eps: float, scale: float,
                 num_heads: int, num_kv_heads: int, head_dim: int):
        self._impl = _core.DecodeLayers(layers, final_norm, float(eps), float(scale),
                                        num_heads, num_kv_heads, head_dim)
        self.num_layers = self._impl.num_layers

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 positions: torch.Tensor, slot_mapping: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor,
                 k_caches: Sequence[torch.Tensor], v_caches: Sequence[torch.Tensor],
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """Runs the stack on one decode token per sequence; writes each token's K/V.

        Parameters
        ----------
        x : torch.Tensor
            ``[num_tokens, hidden]`` token embeddings, ``num_tokens <= MAX_TOKENS`` (16).
        cos, sin : torch.Tensor
            ``[max_positions, head_dim]`` rotary tables.
        positions, slot_mapping : torch.Tensor
            int64 ``[num_tokens]``: each token's position and KV slot (``-1``: not written).
        block_tables : torch.Tensor
            int32 ``[num_tokens, max_blocks_per_seq]``, one row per sequence.
        seq_lens : torch.Tensor
            int32 ``[num_tokens]``: each sequence's length with its new token.
        k_caches, v_caches : sequence of torch.Tensor
            One ``[num_blocks, block_size, num_kv_heads, head_dim]`` cache per layer.
        out : torch.Tensor, optional
            ``[num_tokens, hidden]`` output buffer.

        Returns
        -------
        torch.Tensor
            ``[num_tokens, hidden]``: the final-norm hidden states.
        """
        if out is None:
            out = torch.empty_like(_tensor(x, "x"))
        self._impl.forward(x, out, cos, sin, positions, slot_mapping, block_tables, seq_lens,
                           k_caches, v_caches)
        return out


# torch.ops.ponder.<name>: the functions above behind the dispatcher.
from ponder import torch_ops as _torch_ops  # noqa: E402,F401  (registers them)
