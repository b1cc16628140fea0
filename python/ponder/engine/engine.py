"""Engine: the public facade. It loads the model, checks every request at the door (so a
bad argument is an exception naming it and nothing is queued), builds the request
(``ponder.engine.requests``, ``ponder.engine.search_driver``) and hands it to the
``EngineCore``, whose ``step()`` serves everything queued (``ponder.engine.core``);
``generate`` / ``search`` / ``beam_search`` step until their requests are done.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from ponder._core import KvCacheManager
from ponder._validate import INT32_MAX, check_float, check_int
from ponder.engine.args import check_engine_args
from ponder.engine.core import EngineCore
from ponder.engine.outputs import BeamOutput, RequestError, RequestOutput, StepEvent
from ponder.engine.processor import OutputProcessor
from ponder.engine.requests import BeamRequest, GenerateRequest, Request
from ponder.engine.runner import ModelRunner, resolve_dtype
from ponder.engine.search_driver import SearchDriver
from ponder.models.loader import load_checkpoint
from ponder.prm.scorer import PrmScorer
from ponder.sampling import Sampling
from ponder.search.specs import SearchSpec
from ponder.tokenizer import IncrementalDetokenizer, Tokenizer

_SEED_MIX = 0x9E3779B97F4A7C15


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
    block_size : int
        Tokens per KV block (1 to 256).
    max_num_batched_tokens : int
        Tokens one forward pass may run (prefills are chunked to fit).
    max_num_seqs : int
        Sequences admitted to run at once (the completions of an ``n > 1`` request that
        fork its prompt, and a beam search's next beams, join without waiting for room).
    enable_prefix_cache : bool
        Share full KV blocks of identical prefixes across requests.
    """

    def __init__(self, model: str, prm=None, prm_format: str | None = None,
                 dtype: str = "float32", device: str = "cpu", kv_blocks: int | None = None,
                 seed: int = 0, block_size: int = 16, max_num_batched_tokens: int = 2048,
                 max_num_seqs: int = 256, enable_prefix_cache: bool = True,
                 prm_kv_blocks: int | None = None, prm_incremental: bool = True):
        check_engine_args(model, prm, prm_format, dtype, device, kv_blocks, seed, block_size,
                          max_num_batched_tokens, max_num_seqs, enable_prefix_cache,
                          prm_kv_blocks, prm_incremental)
        self.device = torch.device(device)
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
        self.seed = int(seed)
        self.processor = OutputProcessor(self.tokenizer, self.eos_token_ids, self.max_context,
                                         self.config.vocab_size)
        self.prm: PrmScorer | None = None
        if prm is not None or prm_format is not None:
            self.prm = PrmScorer(prm, prm_format, self.runner.dtype, self.device, prm_kv_blocks,
                                 block_size, enable_prefix_cache, prm_incremental,
                                 policy=(self.runner, self.tokenizer))
        self.core = EngineCore(self.runner, self.kv, self.processor, self.prm,
                               max_num_batched_tokens, max_num_seqs)
        self.scheduler, self.stats = self.core.scheduler, self.core.stats
        self._ids = itertools.count()
        self._requests: dict[int, Request] = {}   # until their output is handed over

    @property
    def max_context(self) -> int:
        """Tokens a sequence can hold: the model's positions or the KV pool, whichever ends
        first."""
        return self.runner.max_context

    # --- validation at the door ---------------------------------------------------------
    def _prompt_ids(self, prompt, chat: bool, name: str = "prompt",
                    system_prompt: str | None = None) -> tuple[str | None, list[int]]:
        if not isinstance(chat, bool):
            raise TypeError(f"chat must be a bool, got {chat!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError("system_prompt must be a str or None")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError(f"{name} is empty")
            if self.tokenizer is None:
                raise ValueError(f"this model has no tokenizer: pass {name} as token ids")
            if chat and self.tokenizer.chat_template:
                msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
                ids = self.tokenizer.encode_chat(msgs + [{"role": "user", "content": prompt}])
            else:
                ids = self.tokenizer.encode(prompt)
            text = prompt
        else:
            if not isinstance(prompt, (list, tuple)) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise TypeError(f"{name} must be a str or a list of token ids")
            ids, text = list(prompt), None
            if not ids:
                raise ValueError(f"{name} is empty")
            if min(ids) < 0 or max(ids) >= self.config.vocab_size:
                raise ValueError(f"{name} token ids must be in [0, {self.config.vocab_size})")
        if len(ids) >= self.max_context:
            raise ValueError(f"{name} has {len(ids)} tokens; the context holds "
                             f"{self.max_context} (the model's positions or the KV pool)")
        return text, ids

    def _check_sampling(self, sampling) -> Sampling:
        sampling = Sampling() if sampling is None else sampling
        if not isinstance(sampling, Sampling):
            raise TypeError("sampling must be a ponder.Sampling or a search strategy")
        # The request keeps its own checked copy: the sampler trusts it (ponder.kernels), so a
        # caller's later change to their object must not reach it.
        sampling = dataclasses.replace(sampling)
        vocab = self.config.vocab_size
        if sampling.n > self.kv.num_blocks:
            raise ValueError(f"n ({sampling.n}) is larger than the KV pool's "
                             f"{self.kv.num_blocks} blocks: each of the n sequences needs a "
                             "block of its own")
        if sampling.top_k > vocab:
            raise ValueError(f"top_k ({sampling.top_k}) is larger than the vocabulary ({vocab})")
        if sampling.logprobs is not None and sampling.logprobs > vocab:
            raise ValueError(f"logprobs ({sampling.logprobs}) is larger than the vocabulary "
                             f"({vocab})")
        if any(t >= vocab for t in sampling.stop_token_ids):
            raise ValueError(f"stop_token_ids must be in [0, {vocab})")
        if sampling.stop:
            if self.tokenizer is None:
                raise ValueError("stop strings need a model with a tokenizer")
            self.processor.stop_matcher(sampling.stop)
        return sampling

    def _new_detok(self):
        return IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None

    def _request_seed(self, seed: int | None, rid: int) -> int:
        return seed if seed is not None else (self.seed * _SEED_MIX + rid) % 2**63

    # --- requests -----------------------------------------------------------------------
    def add_request(self, prompt, sampling: Sampling | SearchSpec | None = None, chat: bool = True,
                    prm=None, system_prompt: str | None = None, answer_fn=None) -> int:
        """Queues a prompt (str, or list of token ids) with sampling parameters, or a
        question with a search strategy (ponder.BestOfN, ponder.BeamSearch, ...); returns its
        request id. system_prompt goes before a str prompt in the chat template. For a
        search, prm is a verifier callable ``verifier(question, steps) -> list[float]``,
        ``"confidence"`` (the policy's own confidence, exp(mean token logprob) per step, even
        on an engine with a PRM) or None (the engine's PRM, else the confidence) and
        ``answer_fn(solution_text) -> str or None`` picks the answer. Everything is checked
        before anything is queued."""
        if isinstance(sampling, SearchSpec):
            return self._enqueue(self._new_search(prompt, sampling, chat, prm, system_prompt,
                                                  answer_fn))
        if prm is not None or answer_fn is not None:
            raise TypeError("prm and answer_fn apply to searches: pass a search strategy as "
                            "sampling, or leave them None")
        sampling = self._check_sampling(sampling)
        text, ids = self._prompt_ids(prompt, chat, system_prompt=system_prompt)
        return self._enqueue(self._new_generate(text, ids, sampling))

    def _new_generate(self, text, ids, sampling) -> GenerateRequest:
        rid = next(self._ids)
        return GenerateRequest(rid, text, ids, sampling, self._request_seed(sampling.seed, rid),
                               self._new_detok)

    def _new_search(self, question, spec, chat, prm, system_prompt, answer_fn) -> SearchDriver:
        confidence = isinstance(prm, str) and prm == "confidence"
        if prm is not None and not confidence and not callable(prm):
            raise TypeError("prm must be a callable verifier(question, steps) -> list[float], "
                            f"'confidence' or None, got {prm!r}")
        if answer_fn is not None and not callable(answer_fn):
            raise TypeError("answer_fn must be a callable answer_fn(solution_text) -> str")
        if not isinstance(question, str):
            raise TypeError("question must be a non-empty str")
        if self.tokenizer is None:
            raise ValueError("search needs a model with a tokenizer")
        _, ids = self._prompt_ids(question, chat, "question", system_prompt)
        self.processor.stop_matcher(list(spec.step_stop))
        rid = next(self._ids)
        verifier = None if confidence else prm
        return SearchDriver(rid, question, ids, spec, self._request_seed(spec.seed, rid),
                            verifier, answer_fn, self.kv, None if confidence else self.prm,
                            self._new_detok)

    def _enqueue(self, req: Request) -> int:
        self._requests[req.id] = req
        self.core.add(req)
        return req.id

    def abort(self, request_id: int) -> None:
        """Ends a request now and frees its KV; its output is discarded."""
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise TypeError(f"request_id must be an int, got {request_id!r}")
        req = self._requests.pop(request_id, None)
        if req is None:
            raise ValueError(f"unknown request_id {request_id}")
        self.core.abort(req)

    def has_unfinished(self) -> bool:
        return self.core.has_unfinished()

    def step(self) -> list[StepEvent]:
        """Runs one forward pass over everything scheduled; returns the new tokens/text
        (``ponder.engine.core``)."""
        return self.core.step()

    def output(self, request_id: int):
        """The request's output: a RequestOutput (so far, while it runs), or a SearchResult
        once a search finished (None before). A finished request is handed over and
        forgotten."""
        req = self._requests.get(request_id)
        if req is None:
            raise ValueError(f"unknown request_id {request_id}")
        if req.finished:
            del self._requests[request_id]
        return req.output()

    def search_progress(self, request_id: int) -> dict | None:
        """A live search's progress: ``{"round", "nodes", "tokens_generated"}`` (rounds
        finished, tree nodes with the root, tokens generated so far); None for a request that
        is not a search. Unknown ids (never added, aborted, or handed over by ``output``)
        raise ValueError."""
        req = self._requests.get(request_id)
        if req is None:
            raise ValueError(f"unknown request_id {request_id}")
        return req.progress() if isinstance(req, SearchDriver) else None

    # --- whole calls --------------------------------------------------------------------
    def _run_to_end(self, ids: list[int]) -> tuple[list[Request], list]:
        """Steps until these requests finish (serving everything else meanwhile) and hands
        over their outputs; interrupted, they are aborted, so no KV block leaks."""
        try:
            while any(not self._requests[i].finished for i in ids):
                self.step()
        except BaseException:
            for i in ids:
                if i in self._requests:
                    self.abort(i)
            raise
        reqs = [self._requests[i] for i in ids]
        outs = [self.output(i) for i in ids]
        return reqs, outs

    def generate(self, prompts, sampling: Sampling | None = None, chat: bool = True,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """One output per prompt; a str prompt is wrapped in the chat template when chat is
        True and the model has one, a list of ints is used as token ids. Every prompt is
        checked before any is queued. If some requests fail, the others still finish and one
        ponder.RequestError names the failed prompts, with every output attached."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                         and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise TypeError("prompts must be a non-empty list of str or of token-id lists")
        sampling = self._check_sampling(sampling)
        checked = []
        for i, p in enumerate(prompts):
            checked.append(self._prompt_ids(p, chat, f"prompts[{i}]"))
        ids = [self._enqueue(self._new_generate(t, p, sampling)) for t, p in checked]
        reqs, outs = self._run_to_end(ids)
        failed = [i for i, r in enumerate(reqs) if r.failed]
        if failed:
            raise RequestError(failed, outs, [reqs[i].error for i in failed])
        return outs

    def search(self, question: str, strategy: SearchSpec, prm=None, chat: bool = True,
               system_prompt: str | None = None, answer_fn=None):
        """Runs one search to the end (other requests keep being served) and returns its
        ponder.search.SearchResult: answer, best, candidates, stats, tree. A search that
        fails raises its error."""
        if not isinstance(strategy, SearchSpec):
            raise TypeError("strategy must be a search spec such as ponder.BestOfN(...)")
        rid = self.add_request(question, strategy, chat=chat, prm=prm,
                               system_prompt=system_prompt, answer_fn=answer_fn)
        (req,), (out,) = self._run_to_end([rid])
        if req.failed:
            raise req.exception
        return out

    def score(self, question: str, steps):
        """Per-step PRM scores of one solution (a list of step strings), or of several (a
        list of such lists) in one batch; prefixes they share run once. Needs ``prm=``."""
        if self.prm is None:
            raise ValueError("this engine has no process reward model: pass prm= to Engine")
        if not isinstance(question, str) or not question:
            raise ValueError("question must be a non-empty string")
        nested = isinstance(steps, (list, tuple)) and steps and all(
            isinstance(s, (list, tuple)) for s in steps)
        solutions = [list(s) for s in steps] if nested else [steps]
        for sol in solutions:
            if not isinstance(sol, (list, tuple)) or not all(isinstance(s, str) for s in sol):
                raise TypeError("steps must be a list of str, or a list of such lists")
            if not sol:
                raise ValueError("steps is empty")
        scores = self.prm.score(question, solutions)
        return scores if nested else scores[0]

    def beam_search(self, prompt, width: int, max_tokens: int, length_penalty: float = 1.0,
                    early_stopping: bool | str = False, num_return: int = 1,
                    chat: bool = True, min_tokens: int = 0) -> list[BeamOutput]:
        """Token-level beam search, equal to transformers' ``generate(num_beams=width,
        do_sample=False)``, batched with every other request. The beam bookkeeping runs in
        the C++ core; each running beam is a KV sequence forked from its parent (shared
        blocks, copy-on-write). Best first. min_tokens: EOS is barred until this many tokens
        are generated (transformers' ``min_new_tokens``: its log-probability is set to -inf,
        the rest not renormalized)."""
        width = check_int("width", width, 1, INT32_MAX)
        max_tokens = check_int("max_tokens", max_tokens, 1, INT32_MAX)
        min_tokens = check_int("min_tokens", min_tokens, 0, INT32_MAX)
        num_return = check_int("num_return", num_return, 1, width)
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got "
                             f"{early_stopping!r}")
        length_penalty = check_float("length_penalty", length_penalty)
        text, ids = self._prompt_ids(prompt, chat)
        max_tokens = min(max_tokens, self.max_context - len(ids))
        req = BeamRequest(next(self._ids), text, ids, width, max_tokens, length_penalty,
                          early_stopping, num_return, min_tokens, self.eos_token_ids, self.kv,
                          self.tokenizer)
        (req,), (out,) = self._run_to_end([self._enqueue(req)])
        if req.failed:
            raise req.exception
        return out

