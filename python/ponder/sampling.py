"""Sampling parameters (vLLM-like), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from ponder._validate import (
    INT32_MAX,
    check_bool,
    check_float,
    check_int,
    check_int_list,
    check_seed,
    check_strings,
)


@dataclass
class Sampling:
    """How to sample one request.

    temperature 0 is greedy. top_k 0 or -1, top_p = 1 and min_p = 0 disable those filters.
    stop: strings that end a completion (not included in its text); stop_token_ids: token ids
    that end it (included). seed: None draws one from the engine's seed and the request id.
    logprobs: how many top log-probabilities to return per token (None: only the chosen one).

    Everything that needs no model is checked here (a wrong type is a TypeError, a value out
    of range a ValueError); the engine checks top_k, logprobs and stop_token_ids against its
    vocabulary when the request is added.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    n: int = 1
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self):
        self.max_tokens = check_int("max_tokens", self.max_tokens, 1)
        self.temperature = check_float("temperature", self.temperature, 0.0)
        self.top_p = check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        # The sampler takes top_k as int32.
        self.top_k = check_int("top_k", self.top_k, -1, INT32_MAX)
        self.min_p = check_float("min_p", self.min_p, 0.0, 1.0)
        self.n = check_int("n", self.n, 1)
        self.stop = check_strings("stop", self.stop)
        self.stop_token_ids = check_int_list("stop_token_ids", self.stop_token_ids, 0, INT32_MAX)
        self.seed = check_seed("seed", self.seed)
        if self.logprobs is not None:
            self.logprobs = check_int("logprobs", self.logprobs, 0, INT32_MAX)
        self.ignore_eos = check_bool("ignore_eos", self.ignore_eos)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
