"""torch.ops.ponder.<name>: the ``ponder.ops`` functions behind the dispatcher (torch.compile,
fake tensors). Imported by ``ponder.ops``.

Schemas are written out (not inferred from annotations) so that they read the same on every
torch >= 2.4; (a!) marks the arguments an op writes in place, which functionalization turns
into copies."""

from __future__ import annotations

import torch

from ponder import ops

_LIB = "ponder"


def _register(name: str, schema: str, fn, fake, mutates: tuple[str, ...] = ()):
    op = torch.library.custom_op(f"{_LIB}::{name}", fn, mutates_args=mutates, schema=schema)
    op.register_fake(fake)
    return op


def _no_output(*args, **kwargs) -> None:
    return None


_register(
    "paged_kv_append",
    "(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping)"
    " -> ()",
    ops.paged_kv_append, _no_output, ("k_cache", "v_cache"))
_register(
    "paged_attention",
    "(Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, "
    "Tensor? cu_query_lens=None, float? scale=None, int? max_seq_len=None) -> Tensor",
    lambda query, k_cache, v_cache, block_tables, seq_lens, cu_query_lens=None, scale=None,
    max_seq_len=None: ops.paged_attention(query, k_cache, v_cache, block_tables, seq_lens,
                                          cu_query_lens, scale, max_seq_len=max_seq_len),
    lambda query, *args, **kwargs: torch.empty_like(query))
_register(
    "copy_blocks",
    "(Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, Tensor src, Tensor dst) -> ()",
    ops.copy_blocks, _no_output, ("k_caches", "v_caches"))


def _sample_op(logits, temperature, top_k, top_p, min_p, seeds, seq_ids, positions,
               num_logprobs=0):
    return tuple(ops.sample(logits, temperature, top_k, top_p, min_p, seeds, seq_ids,
                            positions, num_logprobs=num_logprobs))


def _sample_fake(logits, temperature, top_k, top_p, min_p, seeds, seq_ids, positions,
                 num_logprobs=0):
    n = logits.shape[0]
    return (logits.new_empty(n, dtype=torch.int64), logits.new_empty(n, dtype=torch.float32),
            logits.new_empty(n, num_logprobs, dtype=torch.int64),
            logits.new_empty(n, num_logprobs, dtype=torch.float32))


_register(
    "sample",
    "(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
    "Tensor seeds, Tensor seq_ids, Tensor positions, int num_logprobs=0) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _sample_op, _sample_fake)
_register(
    "linear", "(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor", ops.linear,
    lambda x, weight, bias=None: x.new_empty(*x.shape[:-1], weight.shape[0]))
_register(
    "rms_norm", "(Tensor x, Tensor weight, float eps, Tensor(a!)? residual=None) -> Tensor",
    ops.rms_norm, lambda x, weight, eps, residual=None: torch.empty_like(x), ("residual",))
_register(
    "rotary",
    "(Tensor(a!) q, Tensor(b!) k, Tensor cos, Tensor sin, Tensor positions) -> ()",
    ops.rotary, _no_output, ("q", "k"))
_register(
    "silu_and_mul", "(Tensor gate_up) -> Tensor", ops.silu_and_mul,
    lambda gate_up: gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2))
_register(
    "prm_head",
    "(Tensor hidden, Tensor rows, Tensor w2, Tensor? b2=None, Tensor? w1=None, "
    "Tensor? b1=None) -> Tensor",
    ops.prm_head,
    lambda hidden, rows, w2, b2=None, w1=None, b1=None: hidden.new_empty(
        rows.shape[0], dtype=torch.float32))
