"""Sequence: one KV sequence the scheduler runs, with an explicit status.

The scheduler needs only the tokens, the KV sequence, how many tokens of it are computed and
how many must be (``target``); the rest is what output processing needs (sampling state,
text, the search node it extends). A sequence belongs to a client request (``req``): a
generation, a token-level beam search, a tree search or a PRM scoring batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"          # its KV was freed; it waits to be recomputed
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self.name.startswith("FINISHED")

    @property
    def finish_reason(self) -> str | None:
        return self.value if self.finished else None


@dataclass(eq=False)
class Sequence:
    req: object                     # the request it belongs to
    tokens: list[int]
    index: int = 0                  # completion index within its request
    status: SequenceStatus = SequenceStatus.WAITING
    kv_id: int | None = None
    computed: int = 0               # tokens whose KV is in the cache
    prefix_hit_tokens: int = 0      # tokens the prefix cache supplied (each admission)
    hold: int = 0                   # trailing tokens left uncomputed (a search root: 1)
    wants_logits: bool = True       # logits at the last computed token
    cache_limit: int = -1           # tokens the prefix cache may supply (-1: all but one)
    keep_kv: bool = False           # finished: the KV goes to the request, not the pool
    fork_from: Sequence | None = None  # n > 1: forks the first completion's prompt KV
    base: int = -1                  # tokens before this sequence began generating
    # Sampling and output state.
    logprobs: list = field(default_factory=list)
    cum_logprob: float = 0.0
    detok: object = None            # IncrementalDetokenizer
    text: str = ""
    emitted: int = 0
    stop_state: object = None       # _core.StopState while stop strings are watched
    stream: int | None = None       # RNG stream (default: the completion index)
    parent_node: int = -1           # search step: the node it extends
    ended_solution: bool = False    # EOS or the context's end: the solution is complete
    payload: object = None          # client data (a PRM item)

    def __post_init__(self):
        if self.base < 0:
            self.base = len(self.tokens)

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.base

    @property
    def target(self) -> int:
        """Tokens whose KV the next forward passes must compute."""
        return len(self.tokens) - self.hold

    @property
    def prefix_limit(self) -> int:
        return len(self.tokens) - 1 if self.cache_limit < 0 else self.cache_limit

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.finish_reason
