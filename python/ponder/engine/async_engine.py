"""AsyncEngine: an ``Engine`` served by one background thread, for asyncio callers.

The Engine is not thread-safe, so one thread ("ponder-engine") owns it. Requests enter
through a thread-safe command queue (add, abort, call); the thread runs ``step()`` while any
request is in flight and hands each request its new output through the caller's event loop
(``call_soon_threadsafe`` into a per-request ``asyncio.Queue``). Idle, it blocks on the
command queue.

Failures stay where they belong: an argument the engine rejects at the door raises from the
request's iterator; a request that fails inside the engine ends with its output's ``error``;
an exception out of ``step()`` itself (a bug) is logged and fails the requests in flight,
and the thread serves on. A consumer that stops iterating (``break``, ``aclose()``, a
cancelled task, or the iterator garbage-collected) aborts its request, which frees its KV.

Example
-------
>>> aeng = ponder.AsyncEngine.from_model("smollm2", max_queued=64)
>>> async for item in aeng.generate("Hi!", ponder.Sampling(max_tokens=16, seed=0)):
...     if isinstance(item, ponder.RequestOutput):
...         print(item.text)                  # the final output, last
...     else:
...         print(*(d.text for d in item))    # this step's new text per completion
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from ponder.engine.engine import Engine
from ponder.engine.outputs import BeamOutput, RequestOutput, StepEvent
from ponder.sampling import Sampling
from ponder.search.results import SearchResult, SearchTreeView
from ponder.search.specs import SearchSpec

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More than ``max_queued`` requests would be waiting (submitted but not yet running)."""


class EngineClosed(RuntimeError):
    """The request was submitted after shutdown began."""


@dataclass
class CompletionDelta:
    """One completion's new output in one step."""

    index: int
    token_ids: list[int]          # new tokens
    logprobs: list                # their entries (float, or {id: lp} with Sampling.logprobs=k);
    #                               empty unless the request set Sampling.logprobs
    text: str                     # new text
    finish_reason: str | None     # set on the completion's last delta


@dataclass
class SearchProgress:
    """One per finished search round (generated, scored and observed)."""

    round: int
    nodes: int                    # tree nodes so far, the root included
    tokens_generated: int


class _Stream:
    """One request as both threads see it. The engine thread fills ``queue`` (lists of items)
    through the caller's loop; the rest of the fields below ``rid`` are the engine thread's
    record of what was sent, per completion index."""

    def __init__(self, kind: str, args: tuple, kwargs: dict, loop: asyncio.AbstractEventLoop):
        self.kind, self.args, self.kwargs, self.loop = kind, args, kwargs, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.buffer: deque = deque()
        self.done = False                 # the caller took the last item, or walked away
        self.rid: int | None = None
        self.synced = True                # deltas from StepEvents (False: from snapshots)
        self.ended: set[int] = set()
        self.round = 0
        n, sampling = 1, None
        if kind == "generate" and isinstance(args[1], Sampling):
            sampling = args[1]
            n = sampling.n
        self.logprobs = sampling is not None and sampling.logprobs is not None
        # Text the engine holds back while it could still become a stop string.
        self.hold = max(len(s) for s in sampling.stop) - 1 if sampling and sampling.stop else 0
        self.tokens_sent, self.text_sent, self.lps_sent = [0] * n, [0] * n, [0] * n
        self.reason_sent = [False] * n

    async def next(self):
        while not self.buffer:
            self.buffer.extend(await self.queue.get())
        item = self.buffer.popleft()
        if isinstance(item, BaseException):
            self.done = True
            raise item
        if isinstance(item, (RequestOutput, SearchResult)):
            self.done = True
        return item


class _Ticket:
    """Held only by the consumer's async generator: when that is dropped without being
    closed, the ticket's finalizer still aborts the request."""

    __slots__ = ("stream", "close", "__weakref__")


class AsyncEngine:
    """Serves an Engine from a background thread to asyncio callers.

    Parameters
    ----------
    engine : ponder.Engine
        Owned by the engine thread from now on; other threads may only read its
        configuration (``config``, ``tokenizer``, ``max_context``, ...).
    max_queued : int, optional
        ``generate`` / ``search`` raise QueueFull while this many requests wait (submitted,
        not yet running); None: no limit.

    Verifier callables and ``answer_fn`` run on the engine thread. ``beam_search`` runs
    whole on the engine thread (the Engine has no stepwise form of it): other requests
    advance meanwhile but get their output when it returns, and cancelling its await does
    not stop it.
    """

    def __init__(self, engine: Engine, max_queued: int | None = None):
        if not isinstance(engine, Engine):
            raise TypeError("engine must be a ponder.Engine")
        if max_queued is not None and (not isinstance(max_queued, int)
                                       or isinstance(max_queued, bool) or max_queued < 1):
            raise ValueError(f"max_queued must be a positive int or None, got {max_queued!r}")
        self.engine = engine
        self.max_queued = max_queued
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0                 # adds in the command queue
        self._live: dict[int, _Stream] = {}
        self._outbox: list[tuple[_Stream, list]] = []
        self._stop_at: float | None = None
        self._rounds = 0
        self._snapshot: dict = {}
        self._refresh_stats()
        self._thread = threading.Thread(target=self._run, name="ponder-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_model(cls, model: str, max_queued: int | None = None,
                   **engine_kwargs) -> AsyncEngine:
        """Loads ``ponder.Engine(model, **engine_kwargs)`` and serves it."""
        return cls(Engine(model, **engine_kwargs), max_queued)

    # --- the caller's side ----------------------------------------------------------------
    async def generate(self, prompt, sampling: Sampling | None = None, chat: bool = True,
                       system_prompt: str | None = None
                       ) -> AsyncIterator[list[CompletionDelta] | RequestOutput]:
        """Yields, as steps produce them, lists of CompletionDelta (one per completion that
        advanced), then the final RequestOutput (its ``error`` set if the request failed in
        the engine). A bad argument raises its ValueError / TypeError from the first
        ``__anext__``, as do QueueFull and EngineClosed; nothing is yielded then."""
        if isinstance(sampling, SearchSpec):
            raise TypeError("sampling must be a ponder.Sampling: use search() for a strategy")
        ticket = self._submit("generate", (prompt, sampling),
                              {"chat": chat, "system_prompt": system_prompt})
        try:
            while not ticket.stream.done:
                yield await ticket.stream.next()
        finally:
            ticket.close()

    async def search(self, question: str, spec: SearchSpec, prm=None, chat: bool = True,
                     system_prompt: str | None = None, answer_fn=None
                     ) -> AsyncIterator[SearchProgress | SearchResult]:
        """Yields a SearchProgress per finished round, then the SearchResult (its ``error``
        set if the search failed). Arguments as ``Engine.search``; errors at the door raise
        from the first ``__anext__``."""
        if not isinstance(spec, SearchSpec):
            raise TypeError("spec must be a search spec such as ponder.BestOfN(...)")
        ticket = self._submit("search", (question, spec),
                              {"chat": chat, "prm": prm, "system_prompt": system_prompt,
                               "answer_fn": answer_fn})
        try:
            while not ticket.stream.done:
                yield await ticket.stream.next()
        finally:
            ticket.close()

    async def beam_search(self, prompt, **beam_kwargs) -> list[BeamOutput]:
        """``Engine.beam_search(prompt, **beam_kwargs)`` on the engine thread."""
        return await self._call(lambda e: e.beam_search(prompt, **beam_kwargs), steps=True)

    async def score(self, question: str, steps) -> list[float] | list[list[float]]:
        """``Engine.score(question, steps)`` on the engine thread."""
        return await self._call(lambda e: e.score(question, steps), steps=False)

    def stats(self) -> dict:
        """A snapshot taken after the last step: running and waiting requests, policy and
        PRM KV blocks used and free, tokens generated and prefilled, search rounds, PRM
        tokens, forward passes and preemptions (counters since the engine was built)."""
        with self._lock:
            snap = dict(self._snapshot)
            snap["waiting"] += self._pending
        return snap

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stops admitting (EngineClosed), lets the requests in flight finish for up to
        ``timeout`` seconds, aborts the rest (their final output's error says so) and stops
        the engine thread."""
        self._begin_close(timeout)
        await asyncio.to_thread(self._thread.join)

    def close(self, timeout: float = 30.0) -> None:
        """``shutdown`` for synchronous callers (blocks until the thread is gone)."""
        self._begin_close(timeout)
        self._thread.join()

    def _begin_close(self, timeout: float) -> None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
            raise ValueError(f"timeout must be a number >= 0, got {timeout!r}")
        with self._lock:
            if not self._closed:
                self._closed = True
                self._commands.put(("stop", time.monotonic() + timeout))

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the engine is shutting down")
        if not self._thread.is_alive():
            raise EngineClosed("the engine thread has stopped")

    def _submit(self, kind: str, args: tuple, kwargs: dict) -> _Ticket:
        stream = _Stream(kind, args, kwargs, asyncio.get_running_loop())
        with self._lock:
            self._check_open()
            queued = self._pending + self._snapshot["waiting"]
            if self.max_queued is not None and queued >= self.max_queued:
                raise QueueFull(f"{queued} requests are waiting (max_queued="
                                f"{self.max_queued})")
            self._pending += 1
            self._commands.put(("add", stream))
        ticket = _Ticket()
        ticket.stream = stream
        ticket.close = weakref.finalize(ticket, self._abort, stream)
        ticket.close.atexit = False
        return ticket

    def _abort(self, stream: _Stream) -> None:
        """The consumer is gone: abort its request unless it got its last item."""
        if not stream.done:
            stream.done = True
            self._commands.put(("abort", stream))

    async def _call(self, fn, steps: bool):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._check_open()
            self._commands.put(("call", fn, fut, loop, steps))
        return await fut

    # --- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            running = True
            while running:
                try:
                    running = self._drain()
                    if running and self._live:
                        self._step()
                    if self._stop_at is not None and time.monotonic() >= self._stop_at:
                        for s in list(self._live.values()):
                            self._end_early(s, "EngineClosed: the engine shut down before "
                                               "the request finished", "abort")
                except Exception as e:  # a bug here must not strand the requests in flight
                    log.exception("ponder-engine: unexpected error; failing the requests in "
                                  "flight")
                    for s in list(self._live.values()):
                        self._end_early(s, f"{type(e).__name__}: {e}", "error")
                self._publish()
        finally:
            self._last_rites()

    def _last_rites(self) -> None:
        """However the thread ends, nobody waits for it forever: requests still in flight or
        queued end with EngineClosed."""
        with self._lock:
            self._closed = True
        closed = EngineClosed("the engine thread stopped")
        for s in list(self._live.values()):
            self._end_early(s, f"EngineClosed: {closed}", "abort")
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if cmd[0] == "add":
                self._deliver(cmd[1], [closed])
            elif cmd[0] == "call":
                try:
                    cmd[3].call_soon_threadsafe(_settle, cmd[2], None, closed)
                except RuntimeError:
                    pass
        self._publish()

    def _drain(self) -> bool:
        """Runs the queued commands; idle, waits for one. False: time to stop."""
        while True:
            idle = not self._live
            try:
                if idle and self._stop_at is None:
                    self._publish()  # what the last commands changed, before sleeping
                    cmd = self._commands.get()
                else:
                    cmd = self._commands.get_nowait()
            except queue.Empty:
                return not (idle and self._stop_at is not None)
            self._command(cmd)

    def _command(self, cmd: tuple) -> None:
        op = cmd[0]
        if op == "add":
            self._add(cmd[1])
        elif op == "abort":
            s = cmd[1]
            if s.rid is not None and self._live.get(s.rid) is s:
                del self._live[s.rid]
                try:
                    self.engine.abort(s.rid)
                except Exception:
                    log.exception("ponder-engine: could not abort request %s", s.rid)
        elif op == "call":
            _, fn, fut, loop, steps = cmd
            try:
                result, error = fn(self.engine), None
            except BaseException as e:  # the caller's error, whatever it is
                result, error = None, e
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # the caller's loop is closed
                pass
            if steps:  # the call stepped the engine: other requests' events went unseen
                for s in list(self._live.values()):
                    s.synced = False
                    self._update(s, [])
        elif op == "stop":
            self._stop_at = cmd[1]

    def _add(self, s: _Stream) -> None:
        try:
            s.rid = self.engine.add_request(*s.args, **s.kwargs)
        except Exception as e:  # refused at the door: the caller's first __anext__ raises
            with self._lock:
                self._pending -= 1
            self._deliver(s, [e])
            return
        self._live[s.rid] = s
        with self._lock:  # in one move, so QueueFull never misses it
            self._pending -= 1
            self._snapshot["waiting"] += 1

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except BaseException as e:  # a verifier's SystemExit too: this thread serves on
            log.exception("ponder-engine: step() raised; failing the %d requests in flight",
                          len(self._live))
            for s in list(self._live.values()):
                self._end_early(s, f"{type(e).__name__}: {e}", "error")
            return
        by_rid: dict[int, list[StepEvent]] = {}
        for ev in events:
            by_rid.setdefault(ev.request_id, []).append(ev)
        for s in list(self._live.values()):
            if s.kind == "search" or s.rid in by_rid:
                self._update(s, by_rid.get(s.rid, []))
        if self._live and not self.engine.has_unfinished():
            # Never expected: a request ended without the events that say so. Read the
            # outputs rather than step an idle engine forever.
            for s in list(self._live.values()):
                s.synced = False
                self._update(s, [])
                if self._live.get(s.rid) is s:
                    self._end_early(s, "RuntimeError: internal error: the engine has no "
                                       "unfinished request but this one", "error")

    def _update(self, s: _Stream, events: list[StepEvent]) -> None:
        try:
            if s.kind == "search":
                self._update_search(s)
            else:
                self._update_generate(s, events)
        except Exception as e:
            log.exception("ponder-engine: handing out request %s's output failed", s.rid)
            self._end_early(s, f"{type(e).__name__}: {e}", "error")

    def _update_search(self, s: _Stream) -> None:
        prog = self.engine.search_progress(s.rid)
        items: list = [SearchProgress(r, prog["nodes"], prog["tokens_generated"])
                       for r in range(s.round + 1, prog["round"] + 1)]
        self._rounds += len(items)
        s.round = max(s.round, prog["round"])
        result = self.engine.output(s.rid)  # None until the search ends, then handed over
        if result is not None:
            del self._live[s.rid]
            items.append(result)
        if items:
            self._deliver(s, items)

    def _update_generate(self, s: _Stream, events: list[StepEvent]) -> None:
        for ev in events:
            if ev.finished:
                s.ended.add(ev.index)
        out = None
        if not s.synced or s.logprobs or len(s.ended) == len(s.tokens_sent):
            out = self.engine.output(s.rid)  # a finished request is handed over here
        if out is not None and out.finished:
            del self._live[s.rid]
            deltas = _deltas(s, out, final=True)
            self._deliver(s, ([deltas] if deltas else []) + [out])
            return
        if not s.synced:
            deltas = _deltas(s, out, final=False)
        else:
            deltas = _event_deltas(s, events, out)
        if deltas:
            self._deliver(s, [deltas])

    def _end_early(self, s: _Stream, error: str, reason: str) -> None:
        """Ends a request the engine did not finish (a failed step, shutdown): aborts it and
        hands its caller a final output carrying `error`."""
        self._live.pop(s.rid, None)
        out = None
        try:
            out = self.engine.output(s.rid)
            done = out is not None and (s.kind == "search" or out.finished)
            if not done:
                self.engine.abort(s.rid)
        except Exception:
            log.exception("ponder-engine: could not abort request %s", s.rid)
            done = False
        if s.kind == "search":
            if not done:
                spec = s.args[1]
                out = SearchResult("", None, [], {}, SearchTreeView(s.args[0],
                                                                    type(spec).__name__),
                                   error=error)
            self._deliver(s, [out])
            return
        if out is None:
            out = RequestOutput(s.rid, s.args[0] if isinstance(s.args[0], str) else None, [])
        if not done:
            out = replace(out, finished=True, error=error,
                          outputs=[c if c.finish_reason else replace(c, finish_reason=reason)
                                   for c in out.outputs])
        deltas = _deltas(s, out, final=True)
        self._deliver(s, ([deltas] if deltas else []) + [out])

    def _deliver(self, s: _Stream, items: list) -> None:
        self._outbox.append((s, items))

    def _publish(self) -> None:
        """Refreshes the stats snapshot, then hands out what the step produced (so a caller
        that got its request's last item sees stats that include it): one wake-up per event
        loop, however many of its requests advanced."""
        try:
            self._refresh_stats()
        except Exception:
            log.exception("ponder-engine: refreshing the stats failed")
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for s, items in self._outbox:
            by_loop.setdefault(s.loop, []).append((s, items))
        self._outbox = []
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the caller's loop is closed: nobody reads these requests
                for s, _ in batch:
                    if s.rid is not None and self._live.pop(s.rid, None) is s:
                        try:
                            self.engine.abort(s.rid)
                        except Exception:
                            log.exception("ponder-engine: could not abort request %s", s.rid)

    def _refresh_stats(self) -> None:
        e = self.engine
        running_reqs = {id(q.req) for q in e.scheduler.running}
        waiting = len({id(q.req) for q in e.scheduler.waiting} - running_reqs)
        kv = e.kv.stats()
        prm_kv = e.prm.kv.stats() if e.prm is not None else {"used": 0, "free": 0}
        snap = {"running": max(0, len(self._live) - waiting), "waiting": waiting,
                "kv_blocks_used": kv["used"], "kv_blocks_free": kv["free"],
                "prm_kv_blocks_used": prm_kv["used"], "prm_kv_blocks_free": prm_kv["free"],
                "tokens_generated": e.stats["tokens_generated"],
                "tokens_prefilled": e.stats["tokens_prefilled"],
                "search_rounds": self._rounds,
                "prm_tokens": e.prm.stats["tokens_run"] if e.prm is not None else 0,
                "forward_passes": e.stats["forward_passes"],
                "preemptions": e.stats["preemptions"]}
        with self._lock:
            self._snapshot = snap


def _put_all(batch: list[tuple[_Stream, list]]) -> None:
    for s, items in batch:
        s.queue.put_nowait(items)


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():  # the caller stopped waiting
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _event_deltas(s: _Stream, events: list[StepEvent], out: RequestOutput | None
                  ) -> list[CompletionDelta]:
    """This step's deltas from its events; logprobs from the output so far (`out`, taken
    only for requests that asked for logprobs)."""
    by_index: dict[int, CompletionDelta] = {}
    for ev in events:
        d = by_index.setdefault(ev.index, CompletionDelta(ev.index, [], [], "", None))
        d.token_ids.extend(ev.token_ids)
        d.text += ev.text_delta
        if ev.finished:
            d.finish_reason = ev.finish_reason
    for i, d in by_index.items():
        s.tokens_sent[i] += len(d.token_ids)
        s.text_sent[i] += len(d.text)
        s.reason_sent[i] = s.reason_sent[i] or d.finish_reason is not None
        if out is not None and s.logprobs:
            d.logprobs = out.outputs[i].logprobs[s.lps_sent[i]:]
            s.lps_sent[i] += len(d.logprobs)
    return [by_index[i] for i in sorted(by_index)]


def _deltas(s: _Stream, out: RequestOutput, final: bool) -> list[CompletionDelta]:
    """What `out` (the output so far, or the final one) holds that was not sent yet."""
    deltas = []
    for c in out.outputs:
        i = c.index
        ended = final or c.finish_reason is not None
        end = len(c.text) if ended else max(s.text_sent[i], len(c.text) - s.hold)
        d = CompletionDelta(i, c.token_ids[s.tokens_sent[i]:],
                            c.logprobs[s.lps_sent[i]:] if s.logprobs else [],
                            c.text[s.text_sent[i]:end],
                            c.finish_reason if ended and not s.reason_sent[i] else None)
        if d.token_ids or d.text or d.logprobs or d.finish_reason:
            s.tokens_sent[i] += len(d.token_ids)
            s.text_sent[i] = max(s.text_sent[i], end)
            s.lps_sent[i] += len(d.logprobs)
            s.reason_sent[i] = s.reason_sent[i] or d.finish_reason is not None
            deltas.append(d)
    return deltas
