"""EngineCore: the engine step. ``step()`` = ``Scheduler.schedule()`` ->
``ModelRunner.execute()`` -> output processing (sampling, stops, text), after which requests
get their finished sequences back and the searches whose round ended are scored.

A request's failure is its own: a parameter the kernels reject, a verifier or answer_fn that
raises or returns garbage, a PRM text past the PRM's context finish that request with
``finish_reason="error"`` and its message, free its KV, and every other request goes on. A
forward pass that fails finishes the requests in that batch and the engine serves on.
"""

from __future__ import annotations

import torch

from ponder.engine.outputs import StepEvent
from ponder.engine.processor import OutputProcessor
from ponder.engine.requests import BeamRequest, GenerateRequest, Request, finish_status
from ponder.engine.runner import ModelRunner
from ponder.engine.scheduler import ScheduledBatch, Scheduler
from ponder.engine.search_driver import SearchDriver
from ponder.engine.sequence import Sequence, SequenceStatus

_ERROR = SequenceStatus.FINISHED_ERROR


class EngineCore:
    def __init__(self, runner: ModelRunner, kv, processor: OutputProcessor, prm,
                 max_num_batched_tokens: int, max_num_seqs: int):
        self.runner, self.kv, self.processor, self.prm = runner, kv, processor, prm
        self.scheduler = Scheduler(kv, max_num_batched_tokens, max_num_seqs,
                                   reclaim=self._reclaim)
        self._live: list[Request] = []            # not finished, oldest first
        self._events: list[StepEvent] = []
        self.stats = {"forward_passes": 0, "tokens_generated": 0, "tokens_prefilled": 0,
                      "preemptions": 0}

    def add(self, req: Request) -> None:
        self._live.append(req)
        for seq in req.start():
            self.scheduler.add(seq)

    def abort(self, req: Request) -> None:
        """Ends the request now and frees its KV."""
        self._end(req, SequenceStatus.FINISHED_ABORTED)
        req.abort()
        if req in self._live:
            self._live.remove(req)

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def step(self) -> list[StepEvent]:
        """Runs one forward pass over everything scheduled; returns the new tokens/text."""
        batch = self.scheduler.schedule()
        self.stats["preemptions"] = self.scheduler.num_preemptions
        for seq in batch.stopped:  # it filled the pool: finished by the scheduler
            self._pool_full(seq)
        error = self._execute(batch) if batch else None
        for seq in batch.ready:  # search roots the prefix cache held whole
            if error is None:
                self._handoff(seq)
            else:  # their blocks may be ones the failed pass was to compute
                self.scheduler.free_kv(seq, uncache=True)
                self._fail(seq.req, error)
        self._score_searches()
        return self._collect()

    def _pool_full(self, seq: Sequence) -> None:
        self.processor.flush(seq)
        if seq.status is _ERROR or isinstance(seq.req, BeamRequest):
            self._emit(seq, StepEvent(seq.req.id, seq.index, [], "", True, "error"))
            self._fail(seq.req, RuntimeError(f"the KV pool ({self.kv.num_blocks} blocks) "
                                             f"cannot hold this sequence"))
        else:
            self._emit(seq, StepEvent(seq.req.id, seq.index, [], "", True, "length"))
            self._handoff(seq)

    def _execute(self, batch: ScheduledBatch) -> Exception | None:
        reqs = {id(s.req): s.req for s in batch.seqs}.values()
        try:
            self.runner.copy_blocks(batch.copies)
            logits = self.runner.execute(batch.work)
        except Exception as e:  # the batch's failure: its requests end, the engine goes on
            for seq in batch.seqs:
                if seq.kv_id is not None:
                    self.kv.uncache(seq.kv_id)  # their new blocks' KV was never written
            for req in reqs:
                self._fail(req, e)
            return e
        self.stats["forward_passes"] += 1
        self.stats["tokens_prefilled"] += sum(len(w.token_ids) for w in batch.work
                                              if len(w.token_ids) > 1)
        prefilled: dict[int, int] = {}
        for seq, work in zip(batch.seqs, batch.work, strict=True):
            if len(work.token_ids) > 1:
                prefilled[id(seq.req)] = prefilled.get(id(seq.req), 0) + len(work.token_ids)
        for req in reqs:
            if isinstance(req, SearchDriver):
                req.note_forward(prefilled.get(id(req), 0))
        rows, targets, beams, row = [], [], [], -1
        for seq, work in zip(batch.seqs, batch.work, strict=True):
            if not work.needs_logits:
                if not seq.wants_logits and seq.computed >= seq.target and not seq.finished:
                    self._finished(seq, SequenceStatus.FINISHED_STOPPED)  # a search root
                continue
            row += 1
            if seq.finished:
                continue
            if isinstance(seq.req, BeamRequest):
                beams.append((seq, row))
                continue
            rows.append(row)
            targets.append(seq)
            if isinstance(seq.req, GenerateRequest) and seq.index == 0 and not seq.num_generated:
                # The shared prompt is done: the other completions fork it and sample from
                # the same logits (so they run from now on, past max_num_seqs if need be).
                for other in seq.req.unforked(seq):
                    other.kv_id = self.kv.fork(seq.kv_id, seq.computed)
                    other.computed, other.fork_from = seq.computed, None
                    self.scheduler.add_running(other)
                    rows.append(row)
                    targets.append(other)
        self._sample(logits, rows, targets)
        for seq, r in beams:
            self._beam_logits(seq, logits[r])
        return None

    def _sample(self, logits, rows: list[int], seqs: list[Sequence]) -> None:
        if not seqs:
            return
        results, failed = self.processor.sample(logits, rows, seqs)
        for req, e in failed.items():
            self._fail(req, e)
        for i, seq in enumerate(seqs):
            if i not in results or seq.finished:
                continue
            try:
                ev = self.processor.append(seq, *results[i])
            except Exception as e:  # e.g. a token the stop matcher cannot read
                self._fail(seq.req, e)
                continue
            self.stats["tokens_generated"] += 1
            self._emit(seq, ev)
            if ev.finished:
                self._finished(seq, finish_status(ev.finish_reason))

    def _beam_logits(self, seq: Sequence, logits: torch.Tensor) -> None:
        """A beam's logits arrived: it leaves the scheduler (its KV kept by its request)
        until the round is complete; then the next round's beams are scheduled."""
        req = seq.req
        if seq.finished or req.finished:
            return
        self.scheduler.finish(seq, SequenceStatus.FINISHED_STOPPED)
        try:
            children = req.on_logits(seq, logits)
        except Exception as e:
            self._fail(req, e)
            return
        for c in children:
            # Children continue an admitted request: those holding a fork run at once.
            (self.scheduler.add_running if c.kv_id is not None else self.scheduler.add)(c)

    def _emit(self, seq: Sequence, ev: StepEvent) -> None:
        if seq.req.kind == "generate":
            self._events.append(ev)

    def _finished(self, seq: Sequence, status: SequenceStatus) -> None:
        """A sequence ended normally: out of the scheduler, back to its request."""
        self.scheduler.finish(seq, status)
        self._handoff(seq)

    def _handoff(self, seq: Sequence) -> None:
        """Hands a finished sequence to its request, which may hand over new ones."""
        req = seq.req
        if req.finished:
            return
        try:
            new = req.on_finished(seq)
        except Exception as e:  # an answer_fn that raised, ...
            self._fail(req, e)
            return
        for s in new:
            self.scheduler.add(s)

    def _score_searches(self) -> None:
        """Scores every search round that ended in this step, the PRM's share in one batch,
        then lets each search go on. A search whose scoring fails ends alone."""
        runs = [r for r in self._live if isinstance(r, SearchDriver) and r.awaiting_scores
                and not r.finished]
        prm_runs = [r for r in runs if r.prm is not None and r.to_score]
        if prm_runs:
            jobs = [r.prm_jobs() for r in prm_runs]
            try:
                nodes = self.prm.score_paths([j for js in jobs for j in js])
            except Exception:
                nodes = None  # find the search at fault; the others go on
            at = 0
            for r, js in zip(prm_runs, jobs, strict=True):
                try:
                    r.set_prm_scores(nodes[at:at + len(js)] if nodes is not None
                                     else self.prm.score_paths(js))
                except Exception as e:
                    self._fail(r, e)
                at += len(js)
        for r in runs:
            if r.finished:
                continue
            try:
                new = r.after_scores()
            except Exception as e:  # a verifier that raised or returned garbage
                self._fail(r, e)
                continue
            for s in new:
                self.scheduler.add(s)

    def _fail(self, req: Request, exc: BaseException) -> None:
        if req.finished:
            return
        req.fail(exc)
        for seq in req.live_seqs():
            if seq.req.kind == "generate":
                self._events.append(StepEvent(req.id, seq.index, [], "", True, "error"))
        self._end(req, _ERROR)

    def _end(self, req: Request, status: SequenceStatus) -> None:
        for seq in req.live_seqs():
            self.scheduler.finish(seq, status)
        req.release(self.kv)

    def _collect(self) -> list[StepEvent]:
        events, self._events = self._events, []
        if self._live and not self.scheduler.has_work():
            # Every request ends or has work queued; one that has neither would wedge.
            for req in self._live:
                if not req.finished and not req.awaiting_scores:
                    self._fail(req, RuntimeError("internal error: the request had no work "
                                                 "left but had not finished"))
            events += self._events
            self._events = []
        for req in self._live:
            if req.finished and req.kind != "generate":
                text = ""
                if req.kind == "search" and req.result is not None and req.result.best:
                    text = req.result.best.text
                events.append(StepEvent(req.id, 0, [], text, True,
                                        "error" if req.failed else "stop"))
        self._live = [r for r in self._live if not r.finished]
        return events

    def _reclaim(self, blocks: int) -> None:
        """The scheduler is short of blocks: requests give back KV they can recompute
        (searches' node KV, beams waiting for their round), newest request first."""
        for req in reversed(self._live):
            req.reclaim(blocks)
            if self.kv.num_free_blocks >= blocks:
                return
