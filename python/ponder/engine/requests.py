"""The requests the engine serves, as clients of its scheduler: each hands sequences to the
scheduler and receives them back finished (or, for a beam search, with their logits).

- ``GenerateRequest``: n sampled completions; completions 1..n-1 fork the first one's prompt
  KV once it is computed.
- ``BeamRequest``: token-level beam search (the bookkeeping is ``_core.BeamSearch``); each
  round's beams are sequences forked from their parents and batched with everything else.
- ``ponder.engine.search_driver.SearchDriver``: a tree search.
"""

from __future__ import annotations

import numpy as np
import torch

from ponder import _core, kernels
from ponder.engine.outputs import BeamOutput, CompletionOutput, RequestOutput
from ponder.engine.sequence import Sequence, SequenceStatus
from ponder.sampling import Sampling


class Request:
    """What every request has: an id, its prompt, its sequences and, once it failed, why."""

    kind = "generate"

    def __init__(self, rid: int, prompt: str | None, prompt_ids: list[int], sampling: Sampling,
                 seed: int):
        self.id, self.prompt, self.prompt_ids = rid, prompt, prompt_ids
        self.sampling, self.seed = sampling, seed
        self.seqs: list[Sequence] = []
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.aborted = False
        self.awaiting_scores = False   # a search whose round waits for its scores

    @property
    def failed(self) -> bool:
        return self.error is not None

    def live_seqs(self) -> list[Sequence]:
        """Sequences the scheduler may still hold."""
        return [s for s in self.seqs if not s.finished]

    def start(self) -> list[Sequence]:
        raise NotImplementedError

    def on_finished(self, seq: Sequence) -> list[Sequence]:
        """A sequence of this request finished; returns new sequences to schedule."""
        return []

    def release(self, kv) -> None:
        """Frees KV the request itself holds (not its sequences')."""

    def reclaim(self, blocks: int) -> None:
        """The pool is short: give back KV the request holds but can recompute."""

    def abort(self) -> None:
        self.aborted = True

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
            self.exception = exc


class GenerateRequest(Request):
    def __init__(self, rid, prompt, prompt_ids, sampling, seed, detok_factory):
        super().__init__(rid, prompt, prompt_ids, sampling, seed)
        for i in range(sampling.n):
            seq = Sequence(self, list(prompt_ids), index=i,
                           detok=detok_factory() if detok_factory else None)
            seq.fork_from = self.seqs[0] if i > 0 else None
            self.seqs.append(seq)

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)

    def start(self) -> list[Sequence]:
        return [self.seqs[0]]

    def unforked(self, first: Sequence) -> list[Sequence]:
        """Completions still waiting for the first one's prompt KV."""
        return [s for s in self.seqs[1:] if s.fork_from is first and s.kv_id is None
                and not s.finished]

    def output(self) -> RequestOutput:
        n_prompt = len(self.prompt_ids)
        outs = [CompletionOutput(s.index, s.text, s.tokens[n_prompt:], list(s.logprobs),
                                 s.finish_reason, s.cum_logprob)
                for s in self.seqs]
        return RequestOutput(self.id, self.prompt, list(self.prompt_ids), outs, self.finished,
                             self.error)


class BeamRequest(Request):
    """Token-level beam search, equal to transformers' ``generate(num_beams=width,
    do_sample=False)``. A beam whose logits arrived leaves the scheduler, its KV kept by the
    request, until every beam of the round has them; then the core picks the next beams,
    which fork their parents' KV (shared blocks, copy-on-write). Under KV pressure a waiting
    beam's KV is given back and its children recompute their tokens."""

    kind = "beam"

    def __init__(self, rid, prompt, prompt_ids, width, max_tokens, length_penalty,
                 early_stopping, num_return, min_tokens, eos_token_ids, kv, tokenizer):
        super().__init__(rid, prompt, prompt_ids, Sampling(), 0)
        self.core = _core.BeamSearch(width, max_tokens, float(length_penalty), early_stopping,
                                     list(eos_token_ids), num_return)
        self.min_tokens, self.eos_token_ids = min_tokens, list(eos_token_ids)
        self.kv, self.tokenizer = kv, tokenizer
        self.beams = [Sequence(self, list(prompt_ids), keep_kv=True)]
        self.seqs = list(self.beams)
        self.rows: dict[int, torch.Tensor] = {}    # beam index -> its logits
        self.results: list[BeamOutput] | None = None

    @property
    def finished(self) -> bool:
        return self.results is not None or self.failed or self.aborted

    def start(self) -> list[Sequence]:
        return list(self.beams)

    def on_logits(self, seq: Sequence, logits: torch.Tensor) -> list[Sequence]:
        """Takes one (finished) beam's logits; when the round is complete, returns the next
        round's beams."""
        self.rows[next(i for i, b in enumerate(self.beams) if b is seq)] = logits
        if len(self.rows) < len(self.beams):
            return []
        stacked = torch.stack([self.rows[i] for i in range(len(self.beams))])
        self.rows = {}
        (logprobs,) = kernels.to_host(torch.log_softmax(stacked.float(), dim=-1))
        if len(self.beams[0].tokens) - len(self.prompt_ids) < self.min_tokens:
            logprobs[:, self.eos_token_ids] = -np.inf
        parents, tokens = self.core.step(logprobs)
        old, new = self.beams, []
        if self.core.done:
            self.results = self._finalize()
        else:
            for parent, tok in zip(parents.tolist(), tokens.tolist(), strict=True):
                src = old[parent]
                child = Sequence(self, src.tokens + [tok], base=len(self.prompt_ids),
                                 keep_kv=True)
                if src.kv_id is not None:  # else (given back under pressure) recomputed
                    child.kv_id = self.kv.fork(src.kv_id, src.computed)
                    child.computed = src.computed
                new.append(child)
        for b in old:
            if b.kv_id is not None:
                self.kv.free(b.kv_id)
                b.kv_id = None
        self.beams = self.seqs = new
        return list(new)

    def reclaim(self, blocks: int) -> None:
        free_parked(self.kv, self.beams, blocks)

    def release(self, kv) -> None:
        free_parked(kv, self.beams)

    def _finalize(self) -> list[BeamOutput]:
        outs = []
        for token_ids, score in self.core.finalize():
            text = self.tokenizer.decode(token_ids) if self.tokenizer is not None else ""
            outs.append(BeamOutput(list(token_ids), text, float(score)))
        return outs

    def output(self) -> list[BeamOutput]:
        """The beams, best first (empty until the search finished, or if it failed)."""
        return list(self.results or [])


def free_parked(kv, seqs: list[Sequence], blocks: int | None = None) -> bool:
    """Frees the KV of finished sequences that kept theirs (a beam or a search step parked
    until its round is complete) until `blocks` are free (None: all of it). Returns whether
    that many are free."""
    for s in seqs:
        if blocks is not None and kv.num_free_blocks >= blocks:
            return True
        if s.finished and s.kv_id is not None:
            kv.free(s.kv_id)
            s.kv_id = None
    return blocks is None or kv.num_free_blocks >= blocks


def finish_status(reason: str) -> SequenceStatus:
    return {"stop": SequenceStatus.FINISHED_STOPPED,
            "length": SequenceStatus.FINISHED_LENGTH}[reason]
