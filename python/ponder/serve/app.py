"""The FastAPI application of ``ponder serve``: an OpenAI-compatible server in which
test-time search is a request parameter.

Endpoints (``/v1/*`` need ``Authorization: Bearer KEY`` when the server has an API key)::

    GET  /health                 200 while the server runs
    GET  /metrics                Prometheus text (ponder.serve.metrics)
    GET  /v1/models              the served model
    POST /v1/completions         OpenAI completions (+ vLLM's extras, + "search")
    POST /v1/chat/completions    OpenAI chat completions (+ vLLM's extras, + "search")
    POST /v1/score               PRM scores of a solution's steps

Sampling fields map to ``ponder.Sampling``: ``n``, ``max_tokens`` (chat: also
``max_completion_tokens``; its default there is what the context has room for),
``temperature``, ``top_p``, ``stop``, ``seed``, ``logprobs`` (chat: ``logprobs`` +
``top_logprobs``), and vLLM's ``top_k``, ``min_p``, ``ignore_eos``, ``stop_token_ids``.
``stream`` sends SSE chunks ending with ``data: [DONE]``; ``stream_options.include_usage``
adds a last chunk with ``usage`` and no choices. Chat prompts go through the model's chat
template as ``ponder.Engine.generate(prompt, chat=True)`` does; completion prompts (a
string, token ids, or a list of either) are used as they are.

Token-level beam search (vLLM's extra): ``"use_beam_search": true`` with ``n`` beams (the
width; all n returned, best first), ``max_tokens``, ``length_penalty``, ``early_stopping``
(true, false or "never") and ``min_tokens``; ``AsyncEngine.beam_search``, equal to
transformers' beam search.

Search (ponder's extra; the openai client sends it as ``extra_body={"search": {...}}``)::

    "search": {"strategy": "beam",           # bon, beam, dvts, pf, pg, astar, mcts, or the
                                             # spec's class name (BeamSearch, ...)
               "n": 16, "width": 4, ...,     # any field of that ponder spec
               "verifier": "prm",            # or "confidence" (default: prm with --prm)
               "return_tree": false}

The request's ``seed`` seeds the search when the object has none; the sampling fields
(``temperature``, ``max_tokens``, ``stop``, ...) do not apply and are refused: the spec's
``policy_temperature``, ``max_step_tokens``, ``step_stop`` and ``max_tokens`` (the whole
search's token budget) say it. A chat search takes one user message (the question) after an
optional system message; a completion search takes one prompt string (no chat template).
``choices`` are the top ``n`` ranked solutions (choice 0 the selected one, its text the
solution's steps); ``usage.completion_tokens`` counts every token the search generated and
``usage`` adds ``tokens_generated``, ``tokens_prefilled``, ``prefix_hit_tokens``,
``prm_tokens``, ``score_calls``, ``score_steps``, ``rounds`` and ``forward_passes``. A
top-level ``search`` object carries ``strategy``, ``answer``, per-choice ``candidates``
(``answer``, per-step ``scores``, tree ``node``) and, with ``return_tree``, ``tree`` (the
``SearchResult.tree.to_json()`` object). Streamed, each finished round first sends::

    data: {"id": ..., "object": "ponder.search.progress", "created": ..., "model": ...,
           "round": 3, "nodes": 25, "tokens_generated": 1210}

(OpenAI clients that do not know this object skip it), then the solutions as ordinary
chunks (the last one carrying ``search``), the usage chunk if asked, and ``[DONE]``.

PRM scoring (shaped like vLLM's score API; needs ``--prm``)::

    POST /v1/score {"model": ..., "question": "...", "steps": ["step 1", "step 2"]}
    POST /v1/score {"model": ..., "question": "...", "steps": [["a", "b"], ["c"]]}
    -> {"id": "score-...", "object": "list", "created": ..., "model": ...,
        "data": [{"index": 0, "object": "score", "score": [0.91, 0.42]}, ...]}

one ``data`` entry per solution, ``score`` its per-step PRM scores (``Engine.score``).

Errors are OpenAI error objects, ``{"error": {"message", "type", "param", "code"}}``: 400
naming the bad field (``param``), 401 without the API key, 404 for another model name, 429
when more than ``--max-queued`` requests wait, 500 for a request that failed inside the
engine (every other request goes on), 503 while shutting down. A streamed request that
fails after its first chunk ends with ``data: {"error": ...}`` and ``[DONE]``. A client
that disconnects aborts its request, freeing its KV.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ponder.serve.metrics import CONTENT_TYPE, ServerMetrics
from ponder.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    ScoreRequest,
    error_body,
    validation_error,
)
from ponder.serve.serving import OpenAIServing

_ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
              "/v1/score")


def _json(status: int, body: dict) -> JSONResponse:
    return JSONResponse(body, status_code=status)


class _Gate:
    """Pure ASGI middleware (it does not buffer streamed bodies or hide disconnects): checks
    the API key on /v1 paths and counts responses by endpoint and status."""

    def __init__(self, app, api_key: str | None, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.expected is not None and path.startswith("/v1") and scope["method"] != \
                    "OPTIONS":
                got = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(got, self.expected):
                    await _json(401, error_body(401, "invalid or missing API key (send "
                                                     "Authorization: Bearer KEY)"))(
                        scope, receive, send_status)
                    return
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.http.labels(path if path in _ENDPOINTS else "other", str(status)).inc()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(request: Request, coro):
    """Runs a handler until it returns or the client goes away; then it is cancelled, which
    closes its engine iterators and so aborts its requests. (A streamed response watches for
    the disconnect itself once it started.)"""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        return Response(status_code=499)   # nobody reads it
    return work.result()


async def _body(request: Request, model):
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ApiError(400, *validation_error(e)) from None


def _respond(result, status: int = 200):
    if isinstance(result, Response):
        return result
    if isinstance(result, dict):
        return _json(status, result)
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def build_app(async_engine, served_model_name: str, api_key: str | None = None) -> FastAPI:
    """The server's FastAPI app over a started ``ponder.AsyncEngine``. Its lifespan shuts
    the engine down when the app stops (uvicorn's graceful shutdown on SIGINT/SIGTERM)."""

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            await async_engine.shutdown()

    metrics = ServerMetrics(async_engine)
    serving = OpenAIServing(async_engine, served_model_name, metrics)
    app = FastAPI(title="ponder", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.serving = serving
    app.add_middleware(_Gate, api_key=api_key, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, e: ApiError):
        return _json(e.status, e.body())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException):
        return _json(e.status_code, error_body(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def _internal(_request: Request, e: Exception):
        return _json(500, error_body(500, f"{type(e).__name__}: {e}"))

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return _json(200, serving.models())

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await _body(request, CompletionRequest)
        return _respond(await _cancel_on_disconnect(request, serving.completions(req)))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await _body(request, ChatCompletionRequest)
        return _respond(await _cancel_on_disconnect(request, serving.chat(req)))

    @app.post("/v1/score")
    async def score(request: Request):
        req = await _body(request, ScoreRequest)
        return _respond(await _cancel_on_disconnect(request, serving.score(req)))

    return app
