"""Scheduler: which sequences run in the next forward pass, under a token budget, a sequence
budget and a KV pool. One class schedules the policy's forwards and the PRM's (two pools).

Running sequences go first, oldest first (a decode token each, or the next chunk of a
prefill); then waiting ones, first come first served. When the pool runs short, idle KV is
given back first (the KV that waiting sequences hold, then whatever the ``reclaim`` callback
frees: a search's node KV, a PRM's kept nodes), then the newest running sequence is
preempted: its blocks are freed and it is recomputed later from its tokens. Sampling is keyed
by (seed, stream, position), so none of this changes a seeded result.

A sequence that cannot grow even with the pool to itself has filled it: it finishes with
"length" (keeping what it generated), or with an error when it never generated anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ponder.engine.runner import ScheduledSeq
from ponder.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    work: list[ScheduledSeq] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    ready: list[Sequence] = field(default_factory=list)     # finished without a forward
    stopped: list[Sequence] = field(default_factory=list)   # finished here: the pool is full

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, kv, max_num_batched_tokens: int, max_num_seqs: int,
                 reclaim: Callable[[int], None] | None = None):
        self.kv = kv
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.reclaim = reclaim
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # --- queues -------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A sequence that already holds its KV (a fork) and decodes from the next step."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def finish(self, seq: Sequence, status: SequenceStatus) -> None:
        """Takes the sequence out of the queues; its KV goes back to the pool unless the
        request keeps it (a search step that ended normally becomes a node)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif not seq.finished and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = status
        keep = seq.keep_kv and status in (SequenceStatus.FINISHED_STOPPED,
                                          SequenceStatus.FINISHED_LENGTH)
        if not keep:
            self.free_kv(seq)

    def free_kv(self, seq: Sequence, uncache: bool = False) -> None:
        if seq.kv_id is not None:
            if uncache:
                self.kv.uncache(seq.kv_id)
            self.kv.free(seq.kv_id)
            seq.kv_id = None
        seq.computed = 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step -----------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        for seq in list(self.running):
            if budget <= 0:
                break
            n = min(seq.target - seq.computed, budget)
            if n <= 0 or seq.status is not SequenceStatus.RUNNING:  # idle, or preempted here
                continue
            if self._make_room(seq, n, batch):
                self._reserve(seq, n, batch)
                budget -= n
            elif batch:
                # The pool is full of work already in this batch: recompute this one later.
                self._preempt(seq)
            else:
                self._stop_full(seq, batch)  # the pool holds this sequence alone: it is done
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()  # before _make_room, which may queue victims first
            if seq.kv_id is None:
                seq.kv_id = self.kv.create(np.asarray(seq.tokens[:seq.prefix_limit],
                                                      dtype=np.int32))
                seq.computed = self.kv.length(seq.kv_id)
                seq.prefix_hit_tokens += seq.computed
            n = min(seq.target - seq.computed, budget)
            if n <= 0 and not seq.wants_logits:
                # Complete from the prefix cache alone (a search root): done without a pass.
                self.finish(seq, SequenceStatus.FINISHED_STOPPED)
                batch.ready.append(seq)
                continue
            if not self._make_room(seq, n, batch):
                if not batch and not self.running:
                    self._stop_full(seq, batch)
                    continue
                self.free_kv(seq)  # whatever it took from the prefix cache stays cached
                self.waiting.appendleft(seq)
                break
            self.add_running(seq)
            self._reserve(seq, n, batch)
            budget -= n
        return batch

    def _make_room(self, seq: Sequence, n: int, batch: ScheduledBatch) -> bool:
        """Frees blocks until n tokens fit in seq: idle KV first, then the newest running
        sequence not in this batch (never seq itself: the caller decides about that). The
        need is asked again after each release: freeing a block's other holder can spare
        seq a copy-on-write."""
        def fits() -> bool:
            return self.kv.blocks_needed(seq.kv_id, n) <= self.kv.num_free_blocks

        if fits():
            return True
        for other in reversed(self.waiting):
            if other is not seq and other.kv_id is not None:
                self.free_kv(other)
                if fits():
                    return True
        if self.reclaim is not None:
            self.reclaim(self.kv.blocks_needed(seq.kv_id, n))
            if fits():
                return True
        in_batch = {id(s) for s in batch.seqs}
        while not fits():
            victim = next((s for s in reversed(self.running)
                           if s is not seq and id(s) not in in_batch), None)
            if victim is None:
                return False
            self._preempt(victim)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.free_kv(seq)
        seq.fork_from = None
        seq.status = SequenceStatus.PREEMPTED
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _stop_full(self, seq: Sequence, batch: ScheduledBatch) -> None:
        status = (SequenceStatus.FINISHED_LENGTH if seq.num_generated > 0
                  else SequenceStatus.FINISHED_ERROR)
        seq.ended_solution = True  # the context's end ends a solution, as at max positions
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        seq.status = status
        self.free_kv(seq)
        batch.stopped.append(seq)

    def _reserve(self, seq: Sequence, n: int, batch: ScheduledBatch) -> None:
        """Appends n tokens to seq's KV (room was made first: append registers the blocks it
        fills in the prefix cache, so a reservation undone before its forward pass would leave
        cached blocks whose KV was never computed)."""
        run = seq.tokens[seq.computed:seq.computed + n]
        res = self.kv.append(seq.kv_id, np.asarray(run, dtype=np.int32))
        if res is None:
            raise AssertionError("KvCacheManager.append failed after blocks_needed fit")
        slots, cow = res
        batch.copies.extend(map(tuple, cow.tolist()))
        needs_logits = seq.wants_logits and seq.computed + n == len(seq.tokens)
        batch.seqs.append(seq)
        batch.work.append(ScheduledSeq(run, seq.computed, slots, self.kv.block_table(seq.kv_id),
                                       needs_logits))
        seq.computed += n
