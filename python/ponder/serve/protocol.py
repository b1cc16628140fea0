"""Request and response bodies of the OpenAI API as vLLM serves it, validated by pydantic.

Requests keep OpenAI's field names and vLLM's extras (``top_k``, ``min_p``, ``ignore_eos``,
``stop_token_ids``, ``use_beam_search``, ``length_penalty``, ``early_stopping``) and add
ponder's ``search`` object. Unknown fields are ignored, as vLLM does; OpenAI fields that
ponder does not implement are accepted at their neutral value and refused otherwise (see
``unsupported()``). Responses are built as plain dicts in ``ponder.serve.app`` (the shapes
are documented there and in the tests).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class SearchParams(BaseModel):
    """The ``search`` object: ``strategy`` (bon, beam, dvts, pf, pg, astar, mcts or the spec
    class names), ``verifier`` ("prm" or "confidence"; default: the server's PRM if it has
    one), ``return_tree``, and any field of the strategy's spec (``ponder.search.specs``),
    checked when the spec is built."""

    model_config = ConfigDict(extra="allow")

    strategy: str
    verifier: Literal["prm", "confidence"] | None = None
    return_tree: bool = False

    def spec_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _Sampled(_Body):
    """Fields that completions and chat share."""

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted at their neutral value only.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[str, float] | None = None
    # vLLM's extras.
    top_k: int | None = None
    min_p: float | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False
    min_tokens: int = 0
    # ponder's.
    search: SearchParams | None = None

    def unsupported(self) -> str | None:
        """The first field set to something ponder does not implement, or None."""
        neutral = {"presence_penalty": 0.0, "frequency_penalty": 0.0,
                   "repetition_penalty": 1.0, "logit_bias": None, "echo": False,
                   "suffix": None, "best_of": self.n, "tools": None, "response_format": None}
        for name, value in neutral.items():
            got = getattr(self, name, value)
            if got != value and got not in ({}, [], None):
                return name
        return None


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined; other parts refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"messages: only text content parts are supported, got "
                                 f"{part.get('type')!r}")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


class ScoreRequest(_Body):
    """``POST /v1/score``: PRM scores of the steps of one solution (``steps`` a list of
    strings) or of several (a list of such lists) to one question."""

    model: str | None = None
    question: str
    steps: list[str] | list[list[str]]


def validation_error(e: ValidationError) -> tuple[str, str | None]:
    """(message, param) of pydantic's first error: param is the field's dotted path."""
    err = e.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    # Union members add their type to the path ("prompt.str"): keep the field's own part.
    loc = [p for p in loc if not p.startswith(("list[", "function-")) and p not in
           ("str", "int", "bool", "float", "list", "dict")]
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid request")
    return (f"{param}: {msg}" if param else msg), param


_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
                405: "MethodNotAllowedError", 429: "RateLimitError",
                500: "InternalServerError", 503: "ServiceUnavailableError"}


class ApiError(Exception):
    """An error answered as an OpenAI error object with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}`` as vLLM answers it."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "InternalServerError"),
                      "param": param, "code": status}}
