"""ModelRunner: owns the model and its paged KV caches, turns scheduled work into one packed
forward pass and returns logits only where they are needed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ponder import kernels
from ponder.models.llama import AttentionMetadata, CausalLM
from ponder.models.loader import Checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ScheduledSeq:
    """One sequence's part of a forward pass."""

    token_ids: list[int]       # the tokens to run (their KV is written now)
    start_pos: int             # absolute position of token_ids[0]
    slots: np.ndarray          # int64 slot of each token
    block_table: list[int]
    needs_logits: bool         # take logits at the last token


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


class ModelRunner:
    def __init__(self, ck: Checkpoint, dtype: torch.dtype, device: torch.device,
                 kv_blocks: int | None, block_size: int = 16, kv_memory_fraction: float = 0.1,
                 lm_head: bool = True, model: CausalLM | None = None):
        """model: reuse these weights (a second KV pool over the same model) instead of
        loading ck's; lm_head=False drops the LM head (reward models with their own)."""
        self.config = cfg = ck.config
        self.dtype, self.device, self.block_size = dtype, device, block_size
        if model is None:
            with torch.device("meta"):  # no random init: every weight comes from the checkpoint
                model = CausalLM(cfg)
            model.load_weights(ck.tensors, dtype, device, lm_head=lm_head)
            model.eval()
        self.model = model
        elem = torch.tensor([], dtype=dtype).element_size()
        self.block_bytes = 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * elem
        if kv_blocks is None:
            kv_blocks = self._blocks_for_memory(kv_memory_fraction)
        if not isinstance(kv_blocks, int) or kv_blocks < 1:
            raise ValueError(f"kv_blocks must be a positive int, got {kv_blocks!r}")
        self.num_blocks = kv_blocks
        shape = (kv_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        # Uninitialized: attention only reads slots that were written (positions < seq_len),
        # and pages of a big pool are touched only as it fills.
        self.kv_caches = [(torch.empty(shape, dtype=dtype, device=device),
                           torch.empty(shape, dtype=dtype, device=device))
                          for _ in range(cfg.num_layers)]
        self.k_caches = [k for k, _ in self.kv_caches]
        self.v_caches = [v for _, v in self.kv_caches]

    @property
    def max_context(self) -> int:
        """Tokens a sequence can hold: the model's positions or the KV pool, whichever ends
        first."""
        return min(self.config.max_position_embeddings, self.num_blocks * self.block_size)

    def _blocks_for_memory(self, fraction: float) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free * fraction
        else:
            budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * fraction
        # At least enough for one full-length sequence.
        needed = -(-self.config.max_position_embeddings // self.block_size)
        return max(int(budget // self.block_bytes), min(needed, 64))

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Applies copy-on-write copies in the order they were made. Under KV pressure a
        block copied from early in a step can be freed and handed out again (as another
        copy's destination) later in the same step, so the copies go in as few kernel calls
        as keep that order: a call never reads a block another of its copies writes."""
        group: list[tuple[int, int]] = []
        touched: set[int] = set()
        for src, dst in copies:
            if src in touched or dst in touched:
                self._copy(group)
                group, touched = [], set()
            group.append((src, dst))
            touched.update((src, dst))
        self._copy(group)

    def _copy(self, copies: list[tuple[int, int]]) -> None:
        if copies:
            pairs = np.asarray(copies, dtype=np.int64)
            src, dst = kernels.to_device([pairs[:, 0], pairs[:, 1]], self.device)
            kernels.copy_blocks(self.k_caches, self.v_caches, src, dst)

    @torch.inference_mode()
    def execute(self, seqs: list[ScheduledSeq]) -> torch.Tensor:
        """Runs one packed forward; returns fp32 logits [num seqs needing logits, vocab]."""
        lens = np.fromiter((len(s.token_ids) for s in seqs), dtype=np.int64, count=len(seqs))
        want = np.fromiter((i for i, s in enumerate(seqs) if s.needs_logits), dtype=np.int64)
        hidden, rows = self._forward(seqs, lens, (np.cumsum(lens) - 1)[want])
        if not want.size:
            return torch.empty(0, self.config.vocab_size, device=self.device)
        return self.model.compute_logits(hidden.index_select(0, rows))

    @torch.inference_mode()
    def hidden_states(self, seqs: list[ScheduledSeq]) -> tuple[torch.Tensor, list[int]]:
        """Runs one packed forward; returns the final-norm hidden states of every token run
        [sum of lens, hidden] and each sequence's token count."""
        lens = [len(s.token_ids) for s in seqs]
        hidden, _ = self._forward(seqs, np.asarray(lens, dtype=np.int64), None)
        return hidden, lens

    def _forward(self, seqs: list[ScheduledSeq], lens: np.ndarray, rows: np.ndarray | None):
        """The forward's metadata, built and checked on the host and uploaded in one copy
        (with ``rows``, the token rows the caller reads afterwards); then the model."""
        ids = np.fromiter((t for s in seqs for t in s.token_ids), dtype=np.int64,
                          count=int(lens.sum()))
        starts = np.fromiter((s.start_pos for s in seqs), dtype=np.int64, count=len(seqs))
        seq_lens = (starts + lens).astype(np.int32)
        positions = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(ids.size)
        slots = np.concatenate([s.slots for s in seqs]).astype(np.int64, copy=False)
        width = max(len(s.block_table) for s in seqs)
        tables = np.zeros((len(seqs), width), dtype=np.int32)
        for i, s in enumerate(seqs):
            tables[i, :len(s.block_table)] = s.block_table
        decode = bool((lens == 1).all())
        kernels.check_step(slots, tables, seq_lens, lens, self.num_blocks, self.block_size)
        cu = None if decode else np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        t_ids, t_pos, t_slots, t_tables, t_lens, t_cu, t_rows = kernels.to_device(
            [ids, positions, slots, tables, seq_lens, cu, rows], self.device)
        cfg, max_seq_len = self.config, int(seq_lens.max())
        splits, workspace = kernels.attention_plan(ids.size, cfg.num_heads, cfg.num_kv_heads,
                                                   cfg.head_dim, max_seq_len, decode,
                                                   self.device)
        meta = AttentionMetadata(slot_mapping=t_slots, block_tables=t_tables, seq_lens=t_lens,
                                 cu_query_lens=t_cu, max_seq_len=max_seq_len,
                                 num_splits=splits, workspace=workspace)
        return self.model(t_ids, t_pos, meta, self.kv_caches), t_rows
