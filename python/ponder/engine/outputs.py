"""Results handed to users (vLLM-like)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float] | list[dict[int, float]]
    finish_reason: str | None
    cumulative_logprob: float = 0.0


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    error: str | None = None       # why the request failed (its outputs end with "error")

    @property
    def text(self) -> str:
        return self.outputs[0].text


@dataclass
class StepEvent:
    """What one step produced for one completion: new tokens and the new text they give."""

    request_id: int
    index: int
    token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: str | None


@dataclass
class BeamOutput:
    token_ids: list[int]
    text: str
    score: float


class RequestError(RuntimeError):
    """Some requests of a ``generate()`` call failed. ``failed`` holds their indices in the
    prompt list and ``outputs`` every output, good and failed (each failed one carries its
    ``error``), so nothing computed is lost."""

    def __init__(self, failed: list[int], outputs: list, errors: list[str]):
        self.failed, self.outputs, self.errors = failed, outputs, errors
        listed = "; ".join(f"prompt {i}: {e}" for i, e in zip(failed, errors, strict=True))
        super().__init__(f"{len(failed)} of {len(outputs)} requests failed ({listed})")
