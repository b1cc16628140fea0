"""ModelRunner: owns the model and its paged KV caches, turns scheduled work into one packed
forward pass and returns logits only where they are needed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ponder import ops
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
            src = torch.tensor([c[0] for c in copies], dtype=torch.int64, device=self.device)
            dst = torch.tensor([c[1] for c in copies], dtype=torch.int64, device=self.device)
            ops.copy_blocks(self.k_caches, self.v_caches, src, dst)

    @torch.inference_mode()
    def execute(self, seqs: list[ScheduledSeq]) -> torch.Tensor:
        """Runs one packed forward; returns fp32 logits [num seqs needing logits, vocab]."""
        hidden, lens = self.hidden_states(seqs)
        dev = self.device
        last = np.cumsum(lens) - 1
        want = [i for i, s in enumerate(seqs) if s.needs_logits]
        if not want:
            return torch.empty(0, self.config.vocab_size, device=dev)
        rows = torch.from_numpy(last[want]).to(dev)
        return self.model.compute_logits(hidden.index_select(0, rows))

    @torch.inference_mode()
    def hidden_states(self, seqs: list[ScheduledSeq]) -> tuple[torch.Tensor, list[int]]:
        """Runs one packed forward; returns the final-norm hidden states of every token run
        [sum of lens, hidden] and each sequence's token count."""
        dev = self.device
        lens = [len(s.token_ids) for s in seqs]
        ids = np.fromiter((t for s in seqs for t in s.token_ids), dtype=np.int64, count=sum(lens))
        positions = np.concatenate([np.arange(s.start_pos, s.start_pos + n, dtype=np.int64)
                                    for s, n in zip(seqs, lens, strict=True)])
        slots = np.concatenate([s.slots for s in seqs]).astype(np.int64, copy=False)
        seq_lens = np.array([s.start_pos + n for s, n in zip(seqs, lens, strict=True)],
                            dtype=np.int32)
        width = max(len(s.block_table) for s in seqs)
        tables = np.zeros((len(seqs), width), dtype=np.int32)
        for i, s in enumerate(seqs):
            tables[i, :len(s.block_table)] = s.block_table
        decode = all(n == 1 for n in lens)
        cu = None if decode else torch.from_numpy(
            np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)).to(dev)
        meta = AttentionMetadata(
            slot_mapping=torch.from_numpy(slots).to(dev),
            block_tables=torch.from_numpy(tables).to(dev),
            seq_lens=torch.from_numpy(seq_lens).to(dev), cu_query_lens=cu,
            max_seq_len=int(seq_lens.max()))
        hidden = self.model(torch.from_numpy(ids).to(dev), torch.from_numpy(positions).to(dev),
                            meta, self.kv_caches)
        return hidden, lens
