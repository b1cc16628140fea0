"""PrmScorer: a process reward model loaded once, with its own paged KV pool shaped like the
search tree.

A scored node keeps a PRM KV sequence holding its scoring text through its last scored
token. A child forks it at the longest common prefix of the two token lists, so scoring a
new step runs only that step's tokens (and its tag); scores of earlier steps whose tokens did
not change are the parent's. Nodes without a sequence (never scored, or evicted when the
pool ran short) start from the prefix cache instead, which also shares questions across
requests. With ``incremental=False`` every text is run whole, as a re-scoring PRM would.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from ponder import kernels
from ponder._core import KvCacheManager
from ponder.engine.runner import ModelRunner
from ponder.engine.scheduler import Scheduler
from ponder.engine.sequence import Sequence, SequenceStatus
from ponder.models.loader import load_checkpoint
from ponder.prm.formats import FORMATS, PrmFormat, resolve_format
from ponder.tokenizer import Tokenizer


@dataclass(eq=False)
class PrmNode:
    """A scored path: its PRM tokens, scored positions, path scores and (while kept) the KV
    sequence holding those tokens."""

    ids: list[int]
    positions: list[int]
    scores: list[float]
    kv_id: int | None = None
    tokens_run: int = 0    # PRM tokens this node's scoring ran


@dataclass(eq=False)
class _Item:
    ids: list[int]
    rows: list[int]               # token positions whose scores this item computes
    parent: PrmNode | None        # fork its KV at `shared` tokens while it holds one
    shared: int
    create_upto: int              # else the prefix cache may supply ids[:create_upto]
    owner: PrmNode                # gets the scores
    keep: bool                    # the owner takes the KV sequence afterwards
    ran: int = 0                  # tokens its forward passes ran
    scored: int = 0               # rows scored so far (a recomputed chunk scores none twice)
    scores: list[float] = field(default_factory=list)


def _lcp(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    # The lists differ within the shorter one's length, so zip's stopping there is intended.
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


class PrmScorer:
    """Loads a PRM (HF directory or GGUF) and scores (question, steps) pairs.

    policy: (ModelRunner, Tokenizer) of the engine's policy, used by ``self-verify`` when
    path is None or "self" (the policy's weights, a KV pool of the PRM's own).
    """

    def __init__(self, path, prm_format: str | None, dtype: torch.dtype, device: torch.device,
                 kv_blocks: int | None = None, block_size: int = 16,
                 enable_prefix_cache: bool = True, incremental: bool = True,
                 policy: tuple[ModelRunner, Tokenizer | None] | None = None,
                 max_batch_tokens: int = 4096):
        self.incremental = bool(incremental)
        if path in (None, "self"):
            if prm_format not in (None, "self-verify"):
                raise ValueError(f"prm_format {prm_format!r} needs a PRM checkpoint (prm=PATH); "
                                 f"only 'self-verify' runs on the policy itself")
            if policy is None:
                raise ValueError("prm='self' needs the policy model")
            runner, tokenizer = policy
            if tokenizer is None:
                raise ValueError("self-verify needs a policy model with a tokenizer")
            self.format_name = "self-verify"
            ck = SimpleNamespace(config=runner.config, tensors=None)
            model, tensors = runner.model, None
        else:
            ck = load_checkpoint(path)
            if not ck.tokenizer_json:
                raise ValueError(f"the PRM at {path!r} has no tokenizer.json")
            tokenizer = Tokenizer(ck.tokenizer_json, ck.tokenizer_config, ck.generation_config,
                                  ck.config.eos_token_ids)
            self.format_name = resolve_format(prm_format, ck.config.architecture)
            model, tensors = None, ck.tensors
        self.tokenizer = tokenizer
        self.format: PrmFormat = FORMATS[self.format_name](tokenizer)
        head = self.format.head
        self.runner = ModelRunner(ck, dtype, device, kv_blocks, block_size,
                                  lm_head=head == "lm", model=model)
        self.config = self.runner.config
        self.kv = KvCacheManager(self.runner.num_blocks, block_size, enable_prefix_cache)
        # The same scheduler class as the policy's, over the PRM's pool; under pressure it
        # takes back kept node KV (least recently used first).
        self.scheduler = Scheduler(self.kv, max_batch_tokens, 1 << 30, reclaim=self._evict)
        self.head = self._load_head(head, tensors, dtype, device)
        self._kept: OrderedDict[int, PrmNode] = OrderedDict()  # nodes holding KV, LRU first
        self.stats = {"forward_passes": 0, "tokens_run": 0, "tokens_reused": 0, "scored": 0,
                      "evicted": 0, "seconds": 0.0}

    # --- heads --------------------------------------------------------------------------
    def _load_head(self, kind, tensors, dtype, device) -> dict:
        h = self.config.hidden_size

        def get(name, shape):
            if name not in tensors:
                raise ValueError(f"the PRM checkpoint is missing its {self.format_name} head "
                                 f"tensor {name!r}")
            t = tensors.get(name)
            if tuple(t.shape) != shape:
                raise ValueError(f"PRM head tensor {name!r} has shape {tuple(t.shape)}, "
                                 f"expected {shape}")
            return t.to(device=device, dtype=dtype).contiguous()

        if kind == "qwen":
            return dict(w1=get("score.0.weight", (h, h)), b1=get("score.0.bias", (h,)),
                        w2=get("score.2.weight", (2, h)), b2=get("score.2.bias", (2,)))
        if kind == "skywork":
            return dict(w1=None, b1=None, w2=get("v_head.summary.weight", (1, h)),
                        b2=get("v_head.summary.bias", (1,)))
        neg, pos = self.format.lm_token_ids()
        lm = self.runner.model.lm_head.weight
        for t in (neg, pos):
            if not 0 <= t < lm.shape[0]:
                raise ValueError(f"PRM token id {t} is outside the model's vocabulary")
        rows = torch.tensor([neg, pos], dtype=torch.int64, device=lm.device)
        return dict(w1=None, b1=None, w2=lm.index_select(0, rows).contiguous(), b2=None)

    # --- public -------------------------------------------------------------------------
    def score(self, question: str, solutions: list[list[str]]) -> list[list[float]]:
        """Per-step scores of each solution, all in one batch (shared prefixes run once)."""
        if not isinstance(question, str):
            raise TypeError("question must be a str")
        nodes = self.score_paths([(None, question, s) for s in solutions], keep=False)
        return [n.scores for n in nodes]

    def score_paths(self, jobs: list[tuple[PrmNode | None, str, list[str]]],
                    keep: bool = True) -> list[PrmNode]:
        """Scores each (parent, question, steps): steps extend the parent's by one or more.
        Returns one PrmNode per job; with keep, each holds its KV for its children until
        release()."""
        t0 = time.perf_counter()
        keep = keep and self.incremental  # whole-text scoring never forks a node's KV
        fmt = self.format
        nodes: list[PrmNode] = []
        items: list[_Item] = []
        limit = self.runner.max_context
        for parent, question, steps in jobs:
            enc = fmt.encode(question, steps)
            if len(enc.ids) > limit:
                raise ValueError(f"the PRM scoring text has {len(enc.ids)} tokens; the PRM's "
                                 f"context holds {limit}")
            node = PrmNode(enc.ids, enc.positions, [])
            nodes.append(node)
            if not self.incremental:
                parent = None
            if fmt.scores_every_step:
                lcp = _lcp(parent.ids, enc.ids) if parent is not None else 0
                reuse = []
                if parent is not None:
                    for j, s in enumerate(parent.scores):
                        if j >= len(enc.positions) or enc.positions[j] >= lcp:
                            break
                        reuse.append(s)
                node.scores = reuse
                rows = enc.positions[len(reuse):]
                if rows:
                    items.append(self._item(enc.ids, rows, parent, lcp, node, keep))
                continue
            # One text per step: ancestors without a score are scored from their own texts.
            known = list(parent.scores) if parent is not None else []
            if len(known) >= len(steps):
                known = known[:len(steps) - 1]
            node.scores = known
            for j in range(len(known), len(steps) - 1):
                sub = fmt.encode(question, steps[:j + 1])
                items.append(self._item(sub.ids, sub.positions, None, 0, node, False))
            lcp = _lcp(parent.ids, enc.ids) if parent is not None else 0
            items.append(self._item(enc.ids, enc.positions, parent, lcp, node, keep))
        self._run(items)
        for item in items:  # in item order, whichever pass computed them
            item.owner.scores.extend(item.scores)
        for node, (_, _, steps) in zip(nodes, jobs, strict=True):
            if len(node.scores) != len(steps):
                raise RuntimeError("PRM scoring lost a step")  # an internal invariant
        self.stats["scored"] += len(nodes)
        self.stats["seconds"] += time.perf_counter() - t0
        return nodes

    def release(self, node: PrmNode) -> None:
        """Frees a node's KV (its children keep whatever blocks they share)."""
        if node.kv_id is not None:
            self._kept.pop(node.kv_id, None)
            self.kv.free(node.kv_id)
            node.kv_id = None

    # --- items --------------------------------------------------------------------------
    def _item(self, ids, rows, parent, lcp, owner, keep) -> _Item:
        first = rows[0]
        if not self.incremental:
            return _Item(ids, list(rows), None, 0, 0, owner, keep)
        return _Item(ids, list(rows), parent, min(lcp, first), first, owner, keep)

    def _sequence(self, item: _Item) -> Sequence:
        """The item as a scheduler sequence that starts from its shared prefix: a fork of its
        parent's KV while the parent holds one, else whatever the prefix cache holds (which
        includes items started earlier in this call)."""
        seq = Sequence(None, item.ids, wants_logits=False, cache_limit=item.create_upto,
                       keep_kv=item.keep, payload=item)
        p = item.parent
        if p is not None and p.kv_id is not None and item.shared > 0:
            seq.kv_id = self.kv.fork(p.kv_id, item.shared)
            seq.computed = item.shared
            self._kept.move_to_end(p.kv_id)
        return seq

    def _run(self, items: list[_Item]) -> None:
        """Runs the items through the PRM's scheduler in as few forward passes as the token
        budget and the pool allow. On an error nothing of this call stays: unfinished
        sequences are freed and dropped from the prefix cache (a failed pass never wrote
        their blocks), and nodes kept by this call are released."""
        seqs = [self._sequence(item) for item in items]
        for seq in seqs:
            self.scheduler.add(seq)
        try:
            while self.scheduler.has_work():
                batch = self.scheduler.schedule()
                if batch.stopped:
                    raise RuntimeError(
                        f"the PRM KV pool ({self.kv.num_blocks} blocks) cannot hold a "
                        f"{len(batch.stopped[0].tokens)}-token scoring text; raise "
                        f"prm_kv_blocks")
                if batch:
                    self._forward(batch)
                for seq in batch.seqs + batch.ready:
                    if seq.computed >= seq.target:
                        self._done(seq)
        except BaseException:
            for seq in seqs:
                if not seq.finished:
                    self.scheduler.free_kv(seq, uncache=True)
                    self.scheduler.finish(seq, SequenceStatus.FINISHED_ERROR)
            for item in items:
                self.release(item.owner)
            raise

    def _done(self, seq: Sequence) -> None:
        self.scheduler.finish(seq, SequenceStatus.FINISHED_STOPPED)
        item = seq.payload
        self.stats["tokens_reused"] += max(0, len(item.ids) - item.ran)
        if item.keep:
            if item.owner.kv_id is not None:  # scored again: keep the newer sequence
                self.release(item.owner)
            item.owner.kv_id = seq.kv_id
            self._kept[seq.kv_id] = item.owner
            seq.kv_id = None

    def _evict(self, blocks: int) -> None:
        """The scheduler is short of blocks: frees kept node sequences, least recently used
        first, until `blocks` are free."""
        for kv_id in list(self._kept):
            if self.kv.num_free_blocks >= blocks:
                return
            node = self._kept.pop(kv_id)
            self.kv.free(kv_id)
            node.kv_id = None
            self.stats["evicted"] += 1

    def _new_rows(self, item: _Item, start: int, end: int) -> list[int]:
        """Positions of the item's rows in [start, end) not scored yet; marks them scored."""
        rows = [p for p in item.rows[item.scored:] if start <= p < end]
        item.scored += len(rows)
        return rows

    def _forward(self, batch) -> None:
        rows, counts, offset = [], [], 0
        for seq, work in zip(batch.seqs, batch.work, strict=True):
            item, n = seq.payload, len(work.token_ids)
            new = self._new_rows(item, work.start_pos, work.start_pos + n)
            rows.extend(offset + p - work.start_pos for p in new)
            counts.append(len(new))
            offset += n
            item.owner.tokens_run += n
            item.ran += n
            self.stats["tokens_run"] += n
        self.runner.copy_blocks(batch.copies)
        hidden, _ = self.runner.hidden_states(batch.work)
        self.stats["forward_passes"] += 1
        h = self.head
        (idx,) = kernels.to_device([np.asarray(rows, dtype=np.int64)], hidden.device)
        (scores,) = kernels.to_host(kernels.prm_head(hidden, idx, h["w2"], h["b2"], h["w1"],
                                                     h["b1"]))
        scores = scores.tolist()
        at = 0
        for seq, k in zip(batch.seqs, counts, strict=True):
            seq.payload.scores.extend(scores[at:at + k])
            at += k
