"""Requests to engine calls, engine outputs to OpenAI responses.

One ``OpenAIServing`` per server turns a validated body (``ponder.serve.protocol``) into
``AsyncEngine.generate`` / ``search`` / ``beam_search`` / ``score`` calls and their outputs
into the response bodies and SSE chunks of the OpenAI API as vLLM serves it. A call's first
output is awaited before the response starts, because the engine checks the request at its
door then: a bad field is an HTTP 400 even for a streamed request. Every engine iterator is
closed when its response ends, however it ends, which aborts what still runs (a client that
went away frees its KV).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import fields

from ponder.engine.async_engine import EngineClosed, QueueFull, SearchProgress
from ponder.engine.outputs import RequestOutput
from ponder.sampling import Sampling
from ponder.search import specs
from ponder.search.results import SearchResult
from ponder.serve.metrics import RequestTimer, ServerMetrics
from ponder.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    ScoreRequest,
    error_body,
)

STRATEGIES = {"bon": specs.BestOfN, "beam": specs.BeamSearch, "dvts": specs.DVTS,
              "pf": specs.ParticleFilter, "pg": specs.ParticleGibbs, "astar": specs.AStar,
              "mcts": specs.MCTS}
_BY_NAME = {cls.__name__.lower(): cls for cls in STRATEGIES.values()}
# Sampling fields a search does not take from the request (its spec has its own).
_NOT_FOR_SEARCH = ("temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids",
                   "ignore_eos", "max_tokens", "max_completion_tokens", "logprobs",
                   "top_logprobs", "use_beam_search")
_WORD = re.compile(r"[A-Za-z_]\w*")
_MIN_LOGPROB = -9999.0   # vLLM's stand-in for -inf, which JSON cannot carry
_DONE = "data: [DONE]\n\n"


def sse(obj) -> str:
    return f"data: {json.dumps(obj, allow_nan=False)}\n\n"


def door_error(e: Exception, rename: dict[str, str]) -> ApiError:
    """A ValueError/TypeError from a check at the door as a 400: its message starts with
    the argument's name, which ``rename`` maps to the request field."""
    msg = str(e)
    m = _WORD.match(msg)
    word = m.group(0) if m else ""
    if word in rename:
        param = rename[word]
        return ApiError(400, param + msg[len(word):], param)
    return ApiError(400, msg)


async def _first(its: list) -> list:
    """The first item of each engine iterator (the requests enter the engine together);
    on an error, every iterator is closed and the error of the first failing one raised."""
    tasks = [asyncio.ensure_future(it.__anext__()) for it in its]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(its)
        raise


async def _close(its: list) -> None:
    for it in its:
        with suppress(Exception):
            await it.aclose()


async def _merge(its: list, firsts: list) -> AsyncIterator[tuple[int, object]]:
    """(source index, item) from several started iterators, in arrival order."""
    if len(its) == 1:
        yield 0, firsts[0]
        async for item in its[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(i, it, first):
        try:
            await queue.put((i, first))
            async for item in it:
                await queue.put((i, item))
            await queue.put((i, end))
        except Exception as e:
            await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i, it, f))
             for i, (it, f) in enumerate(zip(its, firsts, strict=True))]
    try:
        live = len(tasks)
        while live:
            i, item = await queue.get()
            if item is end:
                live -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _engine_error(e: BaseException) -> ApiError:
    if isinstance(e, (ValueError, TypeError)):
        return ApiError(400, str(e))
    if isinstance(e, QueueFull):
        return ApiError(429, str(e) or "too many requests waiting")
    if isinstance(e, EngineClosed):
        return ApiError(503, str(e) or "the server is shutting down")
    return ApiError(500, f"{type(e).__name__}: {e}")


class _Shape:
    """The per-kind parts of a response: text completion or chat completion."""

    def __init__(self, chat: bool, tokenizer, top_logprobs: int | None):
        self.chat, self.tokenizer, self.k = chat, tokenizer, top_logprobs
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.offsets: dict[int, int] = {}   # choice -> text offset (completions' logprobs)

    def choice(self, index: int, text: str, logprobs, finish: str | None) -> dict:
        body = {"index": index}
        if self.chat:
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["text"] = text
        body.update(logprobs=logprobs, finish_reason=finish, stop_reason=None)
        return body

    def chunk_choice(self, index: int, text: str | None, logprobs, finish: str | None,
                     role: bool = False) -> dict:
        body = {"index": index}
        if self.chat:
            delta = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            body["delta"] = delta
        else:
            body["text"] = text or ""
        body.update(logprobs=logprobs, finish_reason=finish)
        if not self.chat:
            body["stop_reason"] = None
        return body

    def logprobs(self, index: int, token_ids: list[int], entries: list):
        """OpenAI's logprobs object for these tokens (None when none were asked for)."""
        if self.k is None or not token_ids:
            return None
        texts = [self._text(t) for t in token_ids]
        chosen, tops = [], []
        for t, e in zip(token_ids, entries, strict=True):
            if isinstance(e, dict):
                chosen.append(_finite(e.get(t, _MIN_LOGPROB)))
                best = sorted(e.items(), key=lambda kv: -kv[1])[:self.k]
                tops.append([(self._text(i), _finite(lp)) for i, lp in best])
            else:
                chosen.append(_finite(e))
                tops.append([])
        if self.chat:
            return {"content": [
                {"token": s, "logprob": lp, "bytes": list(s.encode()),
                 "top_logprobs": [{"token": ts, "logprob": tl, "bytes": list(ts.encode())}
                                  for ts, tl in top]}
                for s, lp, top in zip(texts, chosen, tops, strict=True)]}
        offsets, at = [], self.offsets.get(index, 0)
        for s in texts:
            offsets.append(at)
            at += len(s)
        self.offsets[index] = at
        return {"tokens": texts, "token_logprobs": chosen,
                "top_logprobs": [dict(top) for top in tops], "text_offset": offsets}

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def _finite(lp: float) -> float:
    return max(float(lp), _MIN_LOGPROB) if not math.isnan(lp) else _MIN_LOGPROB


class OpenAIServing:
    def __init__(self, async_engine, served_model_name: str, metrics: ServerMetrics):
        self.ae = async_engine
        self.engine = async_engine.engine       # read-only: config, tokenizer, max_context
        self.name = served_model_name
        self.metrics = metrics

    # --- shared checks ----------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"The model `{model}` does not exist.", "model")

    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.name, "object": "model", "created": int(time.time()),
            "owned_by": "ponder", "root": self.name, "parent": None,
            "max_model_len": self.engine.max_context}]}

    def _common_checks(self, req) -> None:
        self.check_model(req.model)
        bad = req.unsupported()
        if bad is not None:
            raise ApiError(400, f"{bad} is not supported by ponder", bad)
        if req.n < 1:
            raise ApiError(400, f"n must be an int >= 1, got {req.n}", "n")
        if req.stream_options is not None and not req.stream:
            raise ApiError(400, "stream_options is only allowed with stream=true",
                           "stream_options")

    def _tokenizer(self):
        if self.engine.tokenizer is None:
            raise ApiError(400, "this model has no tokenizer: send the prompt as token ids",
                           "prompt")
        return self.engine.tokenizer

    # --- entry points -----------------------------------------------------------------------
    async def completions(self, req: CompletionRequest):
        self._common_checks(req)
        prompts = req.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise ApiError(400, "prompt is empty", "prompt")
        shape = _Shape(False, self.engine.tokenizer, req.logprobs)
        rename = {"prompt": "prompt", "question": "prompt", "logprobs": "logprobs"}
        if req.search is not None:
            if len(prompts) != 1 or not isinstance(prompts[0], str):
                raise ApiError(400, "a search takes one prompt string", "prompt")
            ids = self._tokenizer().encode(prompts[0])
            return await self._search(req, shape, prompts[0], None, ids, chat=False,
                                      rename=rename)
        ids = [self._encode(p) for p in prompts]
        max_tokens = req.max_tokens
        if max_tokens is None:   # null, as vLLM reads it: what the context has room for
            max_tokens = max(1, self.engine.max_context - max(len(p) for p in ids))
        if req.use_beam_search:
            return await self._beam(req, shape, ids[0] if len(ids) == 1 else None,
                                    max_tokens, rename)
        return await self._generate(req, shape, ids, max_tokens, rename)

    async def chat(self, req: ChatCompletionRequest):
        self._common_checks(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        tok = self._tokenizer()
        if not tok.chat_template:
            raise ApiError(400, "this model has no chat template: use /v1/completions",
                           "messages")
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as e:
            raise ApiError(400, str(e), "messages") from None
        k = (req.top_logprobs or 0) if req.logprobs else None
        shape = _Shape(True, tok, k)
        rename = {"prompt": "messages", "question": "messages", "logprobs": "top_logprobs",
                  "max_tokens": ("max_completion_tokens" if req.max_completion_tokens
                                 is not None else "max_tokens")}
        try:
            ids = tok.encode_chat(messages)
        except Exception as e:  # a template that raises on these messages
            raise ApiError(400, f"messages: the chat template failed: {e}", "messages") from None
        if req.search is not None:
            roles = [m["role"] for m in messages]
            if roles not in (["user"], ["system", "user"]):
                raise ApiError(400, "a search takes one user message, after an optional system "
                                    "message", "messages")
            system = messages[0]["content"] if len(messages) == 2 else None
            return await self._search(req, shape, messages[-1]["content"], system, ids,
                                      chat=True, rename=rename)
        max_tokens = (req.max_completion_tokens if req.max_completion_tokens is not None
                      else req.max_tokens)
        if max_tokens is None:   # vLLM's default: what the context has room for
            max_tokens = max(1, self.engine.max_context - len(ids))
        if req.use_beam_search:
            return await self._beam(req, shape, ids, max_tokens, rename)
        return await self._generate(req, shape, [ids], max_tokens, rename)

    async def score(self, req: ScoreRequest) -> dict:
        self.check_model(req.model)
        if self.engine.prm is None:
            raise ApiError(400, "this server has no process reward model: start it with --prm")
        try:
            scores = await self.ae.score(req.question, req.steps)
        except (ValueError, TypeError) as e:
            raise door_error(e, {"question": "question", "steps": "steps"}) from None
        except Exception as e:
            raise _engine_error(e) from None
        nested = bool(req.steps) and isinstance(req.steps[0], list)
        per_solution = scores if nested else [scores]
        return {"id": f"score-{uuid.uuid4().hex}", "object": "list",
                "created": int(time.time()), "model": self.name,
                "data": [{"index": i, "object": "score", "score": [float(x) for x in s]}
                         for i, s in enumerate(per_solution)]}

    def _encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self._tokenizer().encode(prompt)
        return list(prompt)

    # --- plain generation -------------------------------------------------------------------
    def _sampling(self, req, max_tokens: int, logprobs: int | None, rename) -> Sampling:
        kw = dict(max_tokens=max_tokens, n=req.n, stop=req.stop, seed=req.seed,
                  stop_token_ids=req.stop_token_ids, logprobs=logprobs,
                  ignore_eos=req.ignore_eos)
        for name in ("temperature", "top_p", "top_k", "min_p"):
            if getattr(req, name) is not None:
                kw[name] = getattr(req, name)
        try:
            return Sampling(**kw)
        except (ValueError, TypeError) as e:
            raise door_error(e, {f.name: rename.get(f.name, f.name)
                                 for f in fields(Sampling)}) from None

    async def _start(self, its: list, rename) -> list:
        try:
            return await _first(its)
        except (ValueError, TypeError) as e:
            known = {"top_k", "stop_token_ids", "stop", "n", "max_tokens", "seed", "width"}
            raise door_error(e, {**{w: w for w in known}, "width": "n", **rename}) from None
        except Exception as e:
            raise _engine_error(e) from None

    async def _generate(self, req, shape: _Shape, prompts: list[list[int]], max_tokens: int,
                        rename):
        sampling = self._sampling(req, max_tokens, shape.k, rename)
        timer = self.metrics.timer()
        its = [self.ae.generate(ids, sampling, chat=False) for ids in prompts]
        firsts = await self._start(its, rename)
        rid, created = f"{'chatcmpl' if shape.chat else 'cmpl'}-{uuid.uuid4().hex}", int(
            time.time())
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            return self._stream_generate(req, shape, its, firsts, rid, created, prompt_tokens,
                                         timer)
        finals: list[RequestOutput | None] = [None] * len(its)
        try:
            async for i, item in _merge(its, firsts):
                if isinstance(item, RequestOutput):
                    finals[i] = item
                elif any(d.token_ids for d in item):
                    timer.tokens()
        finally:
            await _close(its)
            timer.done()
        failed = [f.error for f in finals if f is None or f.error]
        if failed:
            raise ApiError(500, f"the request failed in the engine: {failed[0]}")
        choices, completion_tokens = [], 0
        for p, out in enumerate(finals):
            for o in out.outputs:
                completion_tokens += len(o.token_ids)
                choices.append(shape.choice(p * req.n + o.index, o.text,
                                            shape.logprobs(p * req.n + o.index, o.token_ids,
                                                           o.logprobs), o.finish_reason))
        return {"id": rid, "object": shape.object, "created": created, "model": self.name,
                "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}

    async def _stream_generate(self, req, shape, its, firsts, rid, created, prompt_tokens,
                               timer: RequestTimer):
        head = {"id": rid, "object": shape.chunk_object, "created": created, "model": self.name}
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        completion_tokens = 0
        try:
            if shape.chat:
                for i in range(len(its) * req.n):
                    yield sse({**head, "choices": [shape.chunk_choice(i, "", None, None, True)]})
            async for p, item in _merge(its, firsts):
                if isinstance(item, RequestOutput):
                    if item.error:
                        yield sse(error_body(500, f"the request failed in the engine: "
                                                  f"{item.error}"))
                        yield _DONE
                        return
                    continue
                chunks = []
                for d in item:
                    completion_tokens += len(d.token_ids)
                    if not d.text and d.finish_reason is None and shape.k is None:
                        continue
                    index = p * req.n + d.index
                    finish = None if d.finish_reason == "error" else d.finish_reason
                    chunks.append(shape.chunk_choice(
                        index, d.text, shape.logprobs(index, d.token_ids, d.logprobs), finish))
                if any(d.token_ids for d in item):
                    timer.tokens()
                for c in chunks:
                    yield sse({**head, "choices": [c]})
            if include_usage:
                yield sse({**head, "choices": [], "usage": _usage(prompt_tokens,
                                                                  completion_tokens)})
            yield _DONE
        finally:
            await _close(its)
            timer.done()

    # --- token-level beam search ------------------------------------------------------------
    async def _beam(self, req, shape: _Shape, ids: list[int] | None, max_tokens: int, rename):
        if ids is None:
            raise ApiError(400, "use_beam_search takes one prompt", "prompt")
        if shape.k is not None:
            raise ApiError(400, "logprobs are not returned by beam search", "logprobs")
        timer = self.metrics.timer()
        try:
            beams = await self.ae.beam_search(
                ids, width=req.n, max_tokens=max_tokens, length_penalty=req.length_penalty,
                early_stopping=req.early_stopping, num_return=req.n, chat=False,
                min_tokens=req.min_tokens)
        except (ValueError, TypeError) as e:
            raise door_error(e, {"width": "n", "max_tokens": rename.get("max_tokens",
                                                                         "max_tokens"),
                                 "length_penalty": "length_penalty",
                                 "min_tokens": "min_tokens", "early_stopping": "early_stopping",
                                 **rename}) from None
        except Exception as e:
            raise _engine_error(e) from None
        timer.tokens()
        timer.done()
        eos = set(self.engine.eos_token_ids)
        finishes = ["stop" if b.token_ids and b.token_ids[-1] in eos else "length"
                    for b in beams]
        rid, created = f"{'chatcmpl' if shape.chat else 'cmpl'}-{uuid.uuid4().hex}", int(
            time.time())
        usage = _usage(len(ids), sum(len(b.token_ids) for b in beams))
        if not req.stream:
            return {"id": rid, "object": shape.object, "created": created, "model": self.name,
                    "choices": [shape.choice(i, b.text, None, f)
                                for i, (b, f) in enumerate(zip(beams, finishes, strict=True))],
                    "usage": usage}
        head = {"id": rid, "object": shape.chunk_object, "created": created, "model": self.name}
        chunks = [sse({**head, "choices": [shape.chunk_choice(i, b.text, None, f, shape.chat)]})
                  for i, (b, f) in enumerate(zip(beams, finishes, strict=True))]
        return _replay(chunks, head, usage, req)

    # --- search -----------------------------------------------------------------------------
    def _spec(self, req, rename):
        s = req.search
        for name in _NOT_FOR_SEARCH:
            if name in req.model_fields_set and getattr(req, name) not in (None, False):
                raise ApiError(400, f"{name} does not apply to a search: set the search "
                                    f"object's fields (policy_temperature, top_p, step_stop, "
                                    f"max_step_tokens, max_tokens)", name)
        cls = STRATEGIES.get(s.strategy) or _BY_NAME.get(s.strategy.lower())
        if cls is None:
            names = ", ".join(list(STRATEGIES) + [c.__name__ for c in STRATEGIES.values()])
            raise ApiError(400, f"search.strategy: unknown strategy {s.strategy!r}; choose "
                                f"from {names}", "search.strategy")
        names = [f.name for f in fields(cls)]
        kw = s.spec_fields()
        for key in kw:
            if key not in names:
                raise ApiError(400, f"search.{key} is not a field of {cls.__name__} (its "
                                    f"fields: {', '.join(names)})", f"search.{key}")
        if "seed" not in kw and req.seed is not None:
            kw["seed"] = req.seed
        try:
            spec = cls(**kw)
        except (ValueError, TypeError) as e:
            raise door_error(e, {n: f"search.{n}" for n in names}) from None
        verifier = s.verifier or ("prm" if self.engine.prm is not None else "confidence")
        if verifier == "prm" and self.engine.prm is None:
            raise ApiError(400, "search.verifier 'prm' needs a server started with --prm",
                           "search.verifier")
        return spec, verifier

    async def _search(self, req, shape: _Shape, question: str, system: str | None,
                      ids: list[int], chat: bool, rename):
        spec, verifier = self._spec(req, rename)
        it = self.ae.search(question, spec, chat=chat, system_prompt=system,
                            prm="confidence" if verifier == "confidence" else None)
        (first,) = await self._start([it], rename)
        rid, created = f"{'chatcmpl' if shape.chat else 'cmpl'}-{uuid.uuid4().hex}", int(
            time.time())
        if req.stream:
            return self._stream_search(req, shape, it, first, rid, created, len(ids))
        result = first
        try:
            while not isinstance(result, SearchResult):
                result = await it.__anext__()
        finally:
            await _close([it])
        if result.error:
            raise ApiError(500, f"the search failed in the engine: {result.error}")
        body = {"id": rid, "object": shape.object, "created": created, "model": self.name}
        body.update(self._search_body(req, shape, result, len(ids)))
        return body

    def _search_body(self, req, shape: _Shape, result: SearchResult, prompt_tokens: int,
                     stream: bool = False) -> dict:
        cands = result.candidates[:req.n]
        if stream:
            choices = [shape.chunk_choice(i, c.text, None, "stop", shape.chat)
                       for i, c in enumerate(cands)]
        else:
            choices = [shape.choice(i, c.text, None, "stop") for i, c in enumerate(cands)]
        info = {"strategy": result.tree.strategy, "answer": result.answer,
                "candidates": [{"index": i, "answer": c.answer, "scores": c.scores,
                                "node": c.node} for i, c in enumerate(cands)]}
        if req.search.return_tree:
            info["tree"] = json.loads(result.tree.to_json())
        return {"choices": choices, "usage": _search_usage(prompt_tokens, result.stats),
                "search": info}

    async def _stream_search(self, req, shape, it, first, rid, created, prompt_tokens):
        head = {"id": rid, "object": shape.chunk_object, "created": created, "model": self.name}
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        item = first
        try:
            while isinstance(item, SearchProgress):
                yield sse({"id": rid, "object": "ponder.search.progress", "created": created,
                           "model": self.name, "round": item.round, "nodes": item.nodes,
                           "tokens_generated": item.tokens_generated})
                item = await it.__anext__()
            if item.error:
                yield sse(error_body(500, f"the search failed in the engine: {item.error}"))
                yield _DONE
                return
            body = self._search_body(req, shape, item, prompt_tokens, stream=True)
            for i, c in enumerate(body["choices"]):
                last = i == len(body["choices"]) - 1
                yield sse({**head, "choices": [c], **({"search": body["search"]} if last else {})})
            if include_usage:
                yield sse({**head, "choices": [], "usage": body["usage"]})
            yield _DONE
        finally:
            await _close([it])


async def _replay(chunks: list[str], head: dict, usage: dict, req) -> AsyncIterator[str]:
    for c in chunks:
        yield c
    if req.stream_options is not None and req.stream_options.include_usage:
        yield sse({**head, "choices": [], "usage": usage})
    yield _DONE


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _search_usage(prompt_tokens: int, stats: dict) -> dict:
    """OpenAI's usage (completion_tokens: every token the search generated) and the search's
    costs."""
    usage = _usage(prompt_tokens, int(stats.get("tokens_generated", 0)))
    for key in ("tokens_generated", "tokens_prefilled", "prefix_hit_tokens", "prm_tokens",
                "score_calls", "score_steps", "rounds", "forward_passes"):
        usage[key] = int(stats.get(key, 0))
    return usage
