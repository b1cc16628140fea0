"""Engine: requests, continuous batching under a token budget, prefix cache, preemption by
recompute, seeded sampling, streamed text; generate() on top.

Each step packs the running sequences (one decode token each, or the next chunk of a
prefill) and then new requests, first come first served, under ``max_num_batched_tokens``.
When the KV pool runs out, the most recently admitted request is preempted: its blocks are
freed and it is recomputed later from its tokens. Sampling draws from a counter-based
generator keyed by (seed, completion index, position), so preemption, batch composition and
batch size never change a seeded result.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ponder import _core, ops
from ponder._core import KvCacheManager
from ponder.engine.outputs import BeamOutput, CompletionOutput, RequestOutput, StepEvent
from ponder.engine.runner import ModelRunner, ScheduledSeq, resolve_dtype
from ponder.engine.search_run import SearchRun
from ponder.models.loader import load_checkpoint
from ponder.prm.scorer import PrmScorer
from ponder.sampling import Sampling
from ponder.search.specs import SearchSpec
from ponder.tokenizer import IncrementalDetokenizer, Tokenizer

_SEED_MIX = 0x9E3779B97F4A7C15


@dataclass(eq=False)
class _Seq:
    req: _Request
    index: int
    tokens: list[int]
    kv_id: int | None = None
    computed: int = 0             # tokens whose KV is in the cache
    fork_from: _Seq | None = None  # n > 1: shares the first completion's prefill
    logprobs: list = field(default_factory=list)
    cum_logprob: float = 0.0
    detok: IncrementalDetokenizer | None = None
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    base: int = -1                 # tokens before this sequence began generating
    prefill_only: bool = False     # a search root: compute the prompt's KV, sample nothing
    parent_node: int = -1          # search step: the node it extends
    stream: int | None = None      # RNG stream (default: the completion index)
    ended_solution: bool = False   # EOS or the context's end: the solution is complete
    stop_state: object = None      # _core.StopState while stop strings are watched

    def __post_init__(self):
        if self.base < 0:
            self.base = len(self.tokens)

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.base

    @property
    def target(self) -> int:
        """Tokens whose KV the next forward passes must compute."""
        return len(self.tokens) - (1 if self.prefill_only else 0)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(eq=False)
class _Request:
    id: int
    prompt: str | None
    prompt_ids: list[int]
    sampling: Sampling
    seed: int
    seqs: list[_Seq] = field(default_factory=list)
    search: SearchRun | None = None

    @property
    def finished(self) -> bool:
        if self.search is not None:
            return self.search.done
        return all(s.finished for s in self.seqs)


class Engine:
    """Loads a checkpoint (HF directory or GGUF) and generates from it.

    Parameters
    ----------
    model : str
        A Hugging Face model directory or a ``.gguf`` file.
    dtype : {"float32", "bfloat16", "float16"}
    device : str or torch.device
    kv_blocks : int, optional
        KV pool size in blocks of ``block_size`` tokens; by default a fraction of memory.
    seed : int
        Seeds requests that do not set ``Sampling.seed``.
    prm : str, optional
        A process reward model (HF directory or GGUF), loaded once with its own KV pool;
        searches without a verifier callable and ``score()`` use it. ``"self"`` (or None with
        ``prm_format="self-verify"``) asks the policy itself.
    prm_format : {"qwen", "math-shepherd", "rlhflow", "skywork", "self-verify"}, optional
        How the PRM reads steps; by default from its config.json where that says enough.
    prm_kv_blocks : int, optional
        The PRM's KV pool in blocks (by default a fraction of memory, like kv_blocks).
    prm_incremental : bool
        Score only each new step's tokens, forking the parent's PRM KV (default); False runs
        every scoring text whole, as re-scoring PRMs do (for comparison).
    """

    def __init__(self, model: str, prm=None, prm_format: str | None = None,
                 dtype: str = "float32", device: str = "cpu", kv_blocks: int | None = None,
                 seed: int = 0, block_size: int = 16, max_num_batched_tokens: int = 2048,
                 max_num_seqs: int = 256, enable_prefix_cache: bool = True,
                 prm_kv_blocks: int | None = None, prm_incremental: bool = True):
        if max_num_batched_tokens < 1 or max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device")
        ck = load_checkpoint(model)
        self.config = ck.config
        self.tokenizer = (Tokenizer(ck.tokenizer_json, ck.tokenizer_config, ck.generation_config,
                                    ck.config.eos_token_ids) if ck.tokenizer_json else None)
        gen_eos = ck.generation_config.get("eos_token_id")
        if self.tokenizer is not None:
            self.eos_token_ids = list(self.tokenizer.eos_token_ids)
        elif gen_eos is not None:
            self.eos_token_ids = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
        else:
            self.eos_token_ids = list(ck.config.eos_token_ids)
        self.runner = ModelRunner(ck, resolve_dtype(dtype), self.device, kv_blocks, block_size)
        self.kv = KvCacheManager(self.runner.num_blocks, block_size, enable_prefix_cache)
        self.block_size = block_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.seed = int(seed)
        self._stop_matchers: dict[tuple[str, ...], _core.StopMatcher] = {}
        self._token_bytes: list[bytes] | None = None
        self._ids = itertools.count()
        self._requests: dict[int, _Request] = {}
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self.stats = {"forward_passes": 0, "tokens_generated": 0, "tokens_prefilled": 0,
                      "preemptions": 0}
        self._score_queue: list[SearchRun] = []
        self.prm: PrmScorer | None = None
        if prm is not None or prm_format is not None:
            if prm is not None and not isinstance(prm, (str, os.PathLike)):
                raise TypeError("prm must be a path to a PRM checkpoint or 'self' (a verifier "
                                "callable goes to search(..., prm=fn))")
            self.prm = PrmScorer(prm, prm_format, self.runner.dtype, self.device, prm_kv_blocks,
                                 block_size, enable_prefix_cache, prm_incremental,
                                 policy=(self.runner, self.tokenizer))

    # --- requests -----------------------------------------------------------------------
    @property
    def max_context(self) -> int:
        """Tokens a sequence can hold: the model's positions or the KV pool, whichever ends
        first."""
        return self.runner.max_context

    def _check_length(self, ids: list[int], what: str) -> None:
        if len(ids) >= self.max_context:
            raise ValueError(f"{what} has {len(ids)} tokens; the context holds {self.max_context}")

    def _request_seed(self, seed: int | None, rid: int) -> int:
        return seed if seed is not None else (self.seed * _SEED_MIX + rid) % 2**63

    def _prompt_ids(self, prompt, chat: bool) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token ids")
            if chat and self.tokenizer.chat_template:
                ids = self.tokenizer.encode_chat([{"role": "user", "content": prompt}])
            else:
                ids = self.tokenizer.encode(prompt)
            return prompt, ids
        try:
            ids = [int(t) for t in prompt]
        except (TypeError, ValueError):
            raise TypeError("prompt must be a str or a list of token ids") from None
        if not ids:
            raise ValueError("prompt is empty")
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        return None, ids

    def add_request(self, prompt, sampling: Sampling | SearchSpec | None = None, chat: bool = True,
                    prm=None, system_prompt: str | None = None, answer_fn=None) -> int:
        """Queues a prompt (str, or list of token ids) with sampling parameters, or a
        question with a search strategy (ponder.BestOfN, ponder.BeamSearch, ...); returns its
        request id. For a search, prm is a verifier callable
        ``verifier(question, steps) -> list[float]`` (None: the policy's confidence)."""
        if isinstance(sampling, SearchSpec):
            return self._add_search(prompt, sampling, chat, prm, system_prompt, answer_fn)
        sampling = sampling or Sampling()
        if not isinstance(sampling, Sampling):
            raise TypeError("sampling must be a ponder.Sampling or a search strategy")
        text, ids = self._prompt_ids(prompt, chat)
        self._check_length(ids, "prompt")
        if sampling.stop and self.tokenizer is None:
            raise ValueError("stop strings need a model with a tokenizer")
        rid = next(self._ids)
        req = _Request(rid, text, ids, sampling, self._request_seed(sampling.seed, rid))
        for i in range(sampling.n):
            seq = _Seq(req, i, list(ids))
            if self.tokenizer is not None:
                seq.detok = IncrementalDetokenizer(self.tokenizer)
            seq.fork_from = req.seqs[0] if i > 0 else None
            req.seqs.append(seq)
        self._requests[rid] = req
        self._waiting.append(req)
        return rid

    def _add_search(self, question, spec: SearchSpec, chat, prm, system_prompt, answer_fn) -> int:
        if not isinstance(question, str) or not question:
            raise ValueError("a search needs a non-empty question string")
        if prm is not None and not callable(prm):
            raise TypeError("prm must be a callable verifier(question, steps) -> list[float]")
        if self.tokenizer is None:
            raise ValueError("search needs a model with a tokenizer")
        if chat and self.tokenizer.chat_template:
            msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
            ids = self.tokenizer.encode_chat(msgs + [{"role": "user", "content": question}])
        else:
            ids = self.tokenizer.encode(question)
        self._check_length(ids, "question")
        rid = next(self._ids)
        seed = self._request_seed(spec.seed, rid)
        sampling = Sampling(max_tokens=spec.max_step_tokens, temperature=spec.policy_temperature,
                            top_p=spec.top_p, stop=list(spec.step_stop), seed=seed)
        req = _Request(rid, question, ids, sampling, seed)
        root = _Seq(req, 0, list(ids), prefill_only=True)
        req.seqs = [root]
        req.search = SearchRun(self, req, question, spec, prm, answer_fn)
        self._requests[rid] = req
        self._waiting.append(req)
        return rid

    def _new_step_seq(self, run: SearchRun, node: int, tokens: list[int], kv_id: int,
                      stream: int) -> _Seq:
        """A sequence sampling one step after `node`: its KV forks the node's, whose last
        token is still to be computed."""
        seq = _Seq(run.req, 0, list(tokens), parent_node=node, stream=stream)
        seq.kv_id = self.kv.fork(kv_id, len(tokens) - 1)
        seq.computed = len(tokens) - 1
        if self.tokenizer is not None:
            seq.detok = IncrementalDetokenizer(self.tokenizer)
        return seq

    def search(self, question: str, strategy: SearchSpec, prm=None, chat: bool = True,
               system_prompt: str | None = None, answer_fn=None):
        """Runs one search to the end (other requests keep being served) and returns its
        ponder.search.SearchResult: answer, best, candidates, stats, tree."""
        if not isinstance(strategy, SearchSpec):
            raise TypeError("strategy must be a search spec such as ponder.BestOfN(...)")
        rid = self.add_request(question, strategy, chat=chat, prm=prm,
                               system_prompt=system_prompt, answer_fn=answer_fn)
        return self._run_to_end([rid])[0]

    def _run_to_end(self, ids: list[int]) -> list:
        """Steps until these requests finish (serving everything else meanwhile) and hands
        over their outputs; on an error they are aborted, so no KV block leaks."""
        try:
            while any(not self._requests[i].finished for i in ids):
                self.step()
        except BaseException:
            for i in ids:
                if i in self._requests:
                    self.abort(i)
            raise
        return [self.output(i) for i in ids]

    def _stop_matcher(self, stops: list[str]):
        """The core's byte-level matcher for these stop strings (the vocabulary's byte
        strings are handed to the core once per engine)."""
        key = tuple(stops)
        m = self._stop_matchers.get(key)
        if m is None:
            if self._token_bytes is None:
                self._token_bytes = self.tokenizer.token_bytes()
            m = _core.StopMatcher(self._token_bytes, [s.encode() for s in stops])
            self._stop_matchers[key] = m
        return m

    def abort(self, request_id: int) -> None:
        req = self._requests.pop(request_id, None)
        if req is None:
            raise ValueError(f"unknown request_id {request_id}")
        if req.search is not None:
            if req.search in self._score_queue:
                self._score_queue.remove(req.search)
            req.search.release_all()
        self._release(req)
        if req in self._running:
            self._running.remove(req)
        if req in self._waiting:
            self._waiting.remove(req)

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def _release(self, req: _Request) -> None:
        for s in req.seqs:
            if s.kv_id is not None:
                self.kv.free(s.kv_id)
                s.kv_id = None
            s.computed = 0

    # --- scheduling ---------------------------------------------------------------------
    def _preempt(self, req: _Request) -> None:
        self._release(req)
        for s in req.seqs:
            s.fork_from = None  # each completion is recomputed from its own tokens
        self._running.remove(req)
        self._waiting.appendleft(req)
        self.stats["preemptions"] += 1

    def _reserve(self, plan: list[tuple[_Seq, int]], batch: list, copies: list) -> bool:
        """Appends n tokens to each planned sequence, or nothing at all when the pool cannot
        hold them all. Deciding first matters: append registers blocks it fills in the prefix
        cache, so a reservation undone before its forward pass would leave cached blocks
        whose KV was never computed."""
        if sum(self.kv.blocks_needed(seq.kv_id, n) for seq, n in plan) > self.kv.num_free_blocks:
            return False
        for seq, n in plan:
            res = self.kv.append(seq.kv_id, np.asarray(seq.tokens[seq.computed:seq.computed + n],
                                                       dtype=np.int32))
            if res is None:  # blocks_needed is an upper bound: cannot happen
                raise RuntimeError("KV pool accounting is inconsistent")
            slots, cow = res
            copies.extend(map(tuple, cow.tolist()))
            needs_logits = seq.computed + n == len(seq.tokens)
            batch.append((seq, ScheduledSeq(seq.tokens[seq.computed:seq.computed + n],
                                            seq.computed, slots, self.kv.block_table(seq.kv_id),
                                            needs_logits)))
            seq.computed += n
        return True

    @staticmethod
    def _plan(req: _Request, budget: int) -> list[tuple[_Seq, int]]:
        """(sequence, tokens to compute) for this step, within the token budget."""
        plan = []
        for seq in req.seqs:
            if seq.finished or seq.kv_id is None or seq.computed >= seq.target:
                continue
            n = min(seq.target - seq.computed, budget)
            if n <= 0:
                break
            plan.append((seq, n))
            budget -= n
        return plan

    def _schedule(self):
        budget = self.max_num_batched_tokens
        batch: list = []
        copies: list = []
        # Running requests first, oldest first; preempt the newest when blocks run out.
        i = 0
        while i < len(self._running) and budget > 0:
            req = self._running[i]
            plan = self._plan(req, budget)
            while not self._reserve(plan, batch, copies):
                victim = self._running[-1]
                self._preempt(victim)  # when it is req itself: recompute it later
                if victim is req:
                    break
            else:
                budget -= sum(n for _, n in plan)
                i += 1
        # Then waiting requests, first come first served, while blocks and budget last.
        num_seqs = sum(len(r.seqs) for r in self._running)
        while self._waiting and budget > 0 and num_seqs < self.max_num_seqs:
            req = self._waiting[0]
            cached = 0
            for seq in req.seqs:
                if seq.fork_from is None and not seq.finished:
                    seq.kv_id = self.kv.create(np.asarray(seq.tokens[:-1], dtype=np.int32))
                    seq.computed = self.kv.length(seq.kv_id)
                    cached += seq.computed
            plan = self._plan(req, budget)
            if not self._reserve(plan, batch, copies):
                self._release(req)  # not enough room now; stop admitting
                break
            if req.search is not None:
                req.search.stats["prefix_hit_tokens"] += cached
            budget -= sum(n for _, n in plan)
            self._waiting.popleft()
            self._running.append(req)
            num_seqs += len(req.seqs)
        return batch, copies

    # --- the step -----------------------------------------------------------------------
    def step(self) -> list[StepEvent]:
        """Runs one forward pass over everything scheduled; returns the new tokens/text."""
        batch, copies = self._schedule()
        started = self._start_ready_searches()
        if not batch:
            if self._waiting and not self._running and not started:
                raise RuntimeError("the KV pool is too small for the next request")
            return self._finished_search_events()
        self.runner.copy_blocks(copies)
        logits = self.runner.execute([sc for _, sc in batch])
        self.stats["forward_passes"] += 1
        self.stats["tokens_prefilled"] += sum(len(sc.token_ids) for _, sc in batch
                                              if len(sc.token_ids) > 1)
        rows, seqs = [], []
        for row, (seq, _) in enumerate(s for s in batch if s[1].needs_logits):
            targets = [seq]
            if seq.index == 0 and seq.num_generated == 0:
                # The shared prompt is done: fork the other completions from it.
                for other in seq.req.seqs[1:]:
                    if other.fork_from is seq and other.kv_id is None:
                        other.kv_id = self.kv.fork(seq.kv_id, seq.computed)
                        other.computed = seq.computed
                        other.fork_from = None
                        targets.append(other)
            for t in targets:
                rows.append(row)
                seqs.append(t)
        for run in {id(sq.req): sq.req.search for sq, _ in batch
                    if sq.req.search is not None}.values():
            run.note_forward()
        events = self._sample_and_append(logits, rows, seqs)
        self._score_queued()
        self._start_ready_searches()
        return events + self._finished_search_events()

    def _score_queued(self) -> None:
        """Scores every search round that ended in this step, the PRM's share in one batch,
        then lets each search go on."""
        runs, self._score_queue = self._score_queue, []
        prm_runs = [r for r in runs if r.prm is not None and r.to_score]
        failed: list[tuple[SearchRun, Exception]] = []
        if prm_runs:
            jobs = [r.prm_jobs() for r in prm_runs]
            try:
                nodes = self.prm.score_paths([j for js in jobs for j in js])
            except (ValueError, RuntimeError):
                nodes = None  # find the search at fault; the others go on
            if nodes is not None:
                at = 0
                for r, js in zip(prm_runs, jobs):
                    r.set_prm_scores(nodes[at:at + len(js)])
                    at += len(js)
            else:
                for r, js in zip(prm_runs, jobs):
                    try:
                        r.set_prm_scores(self.prm.score_paths(js))
                    except (ValueError, RuntimeError) as e:
                        failed.append((r, e))
        for r in runs:
            if not any(r is f for f, _ in failed):
                r.after_scores()
        if failed:
            # The failing searches end (their KV freed); the error reaches the caller.
            for r, _ in failed:
                if r.req.id in self._requests:
                    self.abort(r.req.id)
            raise failed[0][1]

    def _start_ready_searches(self) -> bool:
        """Searches whose prompt KV is complete start their first round."""
        started = False
        for req in self._running:
            run = req.search
            if run is None or 0 in run.node_kv or run.done:
                continue
            root = req.seqs[0]
            if root.prefill_only and root.kv_id is not None and root.computed >= root.target:
                run.root_ready(root)
                started = True
        return started

    def _finished_search_events(self) -> list[StepEvent]:
        events = []
        for req in self._running:
            if req.search is not None and req.search.done:
                best = req.search.result.best
                events.append(StepEvent(req.id, 0, [], best.text if best else "", True, "stop"))
        self._running = [r for r in self._running if not r.finished]
        return events

    def _sample_and_append(self, logits, rows, seqs) -> list[StepEvent]:
        if not seqs:
            return []
        dev = logits.device
        logits = logits.index_select(0, torch.tensor(rows, device=dev)) if rows != list(
            range(len(rows))) else logits
        sp = [s.req.sampling for s in seqs]
        num_logprobs = max((p.logprobs or 0) for p in sp)
        out = ops.sample(
            logits,
            torch.tensor([p.temperature for p in sp], dtype=torch.float32, device=dev),
            torch.tensor([p.top_k for p in sp], dtype=torch.int32, device=dev),
            torch.tensor([p.top_p for p in sp], dtype=torch.float32, device=dev),
            torch.tensor([p.min_p for p in sp], dtype=torch.float32, device=dev),
            torch.tensor([s.req.seed for s in seqs], dtype=torch.int64, device=dev),
            torch.tensor([s.index if s.stream is None else s.stream for s in seqs],
                         dtype=torch.int64, device=dev),
            torch.tensor([len(s.tokens) for s in seqs], dtype=torch.int64, device=dev),
            num_logprobs=num_logprobs)
        tokens = out.tokens.tolist()
        chosen = out.logprobs.tolist()
        top_ids = out.top_ids.tolist() if num_logprobs else None
        top_lps = out.top_logprobs.tolist() if num_logprobs else None
        events = []
        for i, seq in enumerate(seqs):
            tok = tokens[i]
            seq.tokens.append(tok)
            seq.cum_logprob += chosen[i]
            k = seq.req.sampling.logprobs
            if k:
                entry = dict(zip(top_ids[i][:k], top_lps[i][:k]))
                entry[tok] = chosen[i]
                seq.logprobs.append(entry)
            else:
                seq.logprobs.append(chosen[i])
            self.stats["tokens_generated"] += 1
            ev = self._advance(seq, tok)
            if seq.req.search is None:
                events.append(ev)
        return events

    def _advance(self, seq: _Seq, tok: int) -> StepEvent:
        p = seq.req.sampling
        reason = None
        if tok in p.stop_token_ids or (not p.ignore_eos and tok in self.eos_token_ids):
            reason = "stop"
            seq.ended_solution = True
        if seq.detok is not None:
            seq.detok.push([tok])
            text = seq.detok.text
            if p.stop:
                # Found by the core from the tokens' bytes, even split across tokens or inside
                # an incomplete character; the text is then cut where the stop string starts.
                if seq.stop_state is None:
                    seq.stop_state = _core.StopState()
                if self._stop_matcher(p.stop).feed(seq.stop_state, tok) >= 0:
                    reason = "stop"
                    seq.detok.flush()
                    text = seq.detok.text
                    hit = min((i for i in (text.find(s) for s in p.stop) if i >= 0),
                              default=len(text))
                    text = text[:hit]
            seq.text = text
        if reason is None and (seq.num_generated >= p.max_tokens
                               or len(seq.tokens) >= self.config.max_position_embeddings):
            reason = "length"
            seq.ended_solution = len(seq.tokens) >= self.config.max_position_embeddings
        if reason is not None:
            seq.finish_reason = reason
            if seq.detok is not None and seq.text == seq.detok.text:
                seq.detok.flush()  # an incomplete character at the very end still shows
                seq.text = seq.detok.text
            if seq.req.search is not None:
                seq.req.search.step_done(seq)  # the step's KV becomes its node's
            elif seq.kv_id is not None:
                self.kv.free(seq.kv_id)
                seq.kv_id = None
        # Hold back text that could still become a stop string.
        hold = 0 if reason or not p.stop else max(len(s) for s in p.stop) - 1
        end = max(seq.emitted, len(seq.text) - hold)
        delta = seq.text[seq.emitted:end]
        seq.emitted = end
        return StepEvent(seq.req.id, seq.index, [tok], delta, reason is not None, reason)

    # --- batch API ----------------------------------------------------------------------
    def output(self, request_id: int) -> RequestOutput:
        """The request's output so far; a finished request is handed over and forgotten."""
        req = self._requests.get(request_id)
        if req is None:
            raise ValueError(f"unknown request_id {request_id}")
        if req.finished:
            del self._requests[request_id]
        if req.search is not None:
            return req.search.result
        n_prompt = len(req.prompt_ids)
        outs = [CompletionOutput(s.index, s.text, s.tokens[n_prompt:], list(s.logprobs),
                                 s.finish_reason, s.cum_logprob) for s in req.seqs]
        return RequestOutput(req.id, req.prompt, list(req.prompt_ids), outs, req.finished)

    def generate(self, prompts, sampling: Sampling | None = None, chat: bool = True,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """One output per prompt; a str prompt is wrapped in the chat template when chat is
        True and the model has one, a list of ints is used as token ids."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                         and isinstance(prompts[0], int)):
            prompts = [prompts]
        return self._run_to_end([self.add_request(p, sampling, chat) for p in prompts])

    # --- process reward model ---------------------------------------------------------
    def score(self, question: str, steps):
        """Per-step PRM scores of one solution (a list of step strings), or of several (a
        list of such lists) in one batch; prefixes they share run once. Needs ``prm=``."""
        if self.prm is None:
            raise ValueError("this engine has no process reward model: pass prm= to Engine")
        if not isinstance(question, str) or not question:
            raise ValueError("question must be a non-empty string")
        if isinstance(steps, (list, tuple)) and steps and all(
                isinstance(s, (list, tuple)) for s in steps):
            return self.prm.score(question, [list(s) for s in steps])
        return self.prm.score(question, [steps])[0]

    # --- beam search --------------------------------------------------------------------
    @torch.inference_mode()
    def beam_search(self, prompt, width: int, max_tokens: int, length_penalty: float = 1.0,
                    early_stopping: bool | str = False, num_return: int = 1,
                    chat: bool = True, min_tokens: int = 0) -> list[BeamOutput]:
        """Token-level beam search, equal to transformers' ``generate(num_beams=width,
        do_sample=False)``. The beam bookkeeping runs in the C++ core; each running beam is a
        KV sequence forked from its parent (shared blocks, copy-on-write). Best first.
        min_tokens: EOS is barred until this many tokens are generated (transformers'
        ``min_new_tokens``: its log-probability is set to -inf, the rest not renormalized)."""
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an int >= 1, got {width!r}")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if not isinstance(num_return, int) or not 1 <= num_return <= width:
            raise ValueError(f"num_return must be in [1, width], got {num_return!r}")
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got "
                             f"{early_stopping!r}")
        if not isinstance(min_tokens, int) or min_tokens < 0:
            raise ValueError(f"min_tokens must be an int >= 0, got {min_tokens!r}")
        _, ids = self._prompt_ids(prompt, chat)
        self._check_length(ids, "prompt")
        max_tokens = min(max_tokens, self.max_context - len(ids))
        search = _core.BeamSearch(width, max_tokens, float(length_penalty), early_stopping,
                                  list(self.eos_token_ids), num_return)
        beams: list[_Seq] = []
        try:
            req = _Request(-1, None, ids, Sampling(), 0)
            root = _Seq(req, 0, list(ids))
            root.kv_id = self.kv.create(np.asarray(ids[:-1], dtype=np.int32))
            root.computed = self.kv.length(root.kv_id)
            beams = [root]
            todo = beams
            while True:
                batch, copies = [], []
                if not self._reserve([(b, len(b.tokens) - b.computed) for b in todo], batch,
                                     copies):
                    raise RuntimeError("the KV pool is too small for this beam search; "
                                       "raise kv_blocks")
                self.runner.copy_blocks(copies)
                logits = self.runner.execute([sc for _, sc in batch])
                self.stats["forward_passes"] += 1
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
                if len(beams[0].tokens) - len(ids) < min_tokens:
                    logprobs[:, self.eos_token_ids] = -np.inf
                parents, tokens = search.step(logprobs)
                if search.done:
                    break
                new = []
                for parent, tok in zip(parents.tolist(), tokens.tolist()):
                    src = beams[parent]
                    child = _Seq(req, 0, src.tokens + [tok])
                    child.kv_id = self.kv.fork(src.kv_id, src.computed)
                    child.computed = src.computed
                    new.append(child)
                for b in beams:
                    self.kv.free(b.kv_id)
                beams = todo = new
        finally:
            for b in beams:
                if b.kv_id is not None and self.kv.contains(b.kv_id):
                    self.kv.free(b.kv_id)
        outs = []
        for token_ids, score in search.finalize():
            text = self.tokenizer.decode(token_ids) if self.tokenizer is not None else ""
            outs.append(BeamOutput(list(token_ids), text, float(score)))
        return outs
