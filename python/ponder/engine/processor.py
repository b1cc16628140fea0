"""Output processing: sampling a batch's logits (seeded), appending tokens, stop tokens and
stop strings, detokenization and the streamed text deltas.

A sampling parameter the kernel rejects is the fault of the request that set it: the batch is
then sampled request by request, and the requests whose rows fail are reported back with
their error while every other request gets its tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from ponder import _core, kernels
from ponder.engine.outputs import StepEvent
from ponder.engine.sequence import Sequence

_KERNEL_ERRORS = (ValueError, TypeError, RuntimeError, OverflowError)


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: list[int], max_context: int, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = set(eos_token_ids)
        self.max_context = max_context
        self._stop_matchers: dict[tuple[str, ...], _core.StopMatcher] = {}
        self._token_bytes: list[bytes] | None = None

    # --- sampling -----------------------------------------------------------------------
    def sample(self, logits: torch.Tensor, rows: list[int], seqs: list[Sequence]):
        """Samples row rows[i] of logits for seqs[i]. Returns ({i: (token, logprob, top)},
        {request: exception}) where top is the (ids, logprobs) of the top tokens or None."""
        try:
            return self._sample(logits, rows, seqs), {}
        except _KERNEL_ERRORS:
            pass  # find the requests at fault; the others are sampled on their own
        by_req: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_req.setdefault(id(s.req), []).append(i)
        out, failed = {}, {}
        for idx in by_req.values():
            try:
                got = self._sample(logits, [rows[i] for i in idx], [seqs[i] for i in idx])
            except _KERNEL_ERRORS as e:
                failed[seqs[idx[0]].req] = e
                continue
            out.update({idx[j]: v for j, v in got.items()})
        return out, failed

    def _sample(self, logits, rows, seqs) -> dict[int, tuple]:
        # Parameters come from Sampling objects checked at the door (the engine keeps its
        # own copy), so the kernel runs unchecked: one upload, one read of the outputs.
        sp = [s.req.sampling for s in seqs]
        n = len(seqs)
        num_logprobs = max((p.logprobs or 0) for p in sp)
        select = None if rows == list(range(logits.shape[0])) else np.asarray(rows, np.int64)
        select, temperature, top_k, top_p, min_p, seeds, streams, positions = kernels.to_device([
            select,
            np.fromiter((p.temperature for p in sp), np.float32, n),
            np.fromiter((p.top_k for p in sp), np.int32, n),
            np.fromiter((p.top_p for p in sp), np.float32, n),
            np.fromiter((p.min_p for p in sp), np.float32, n),
            np.fromiter((s.req.seed for s in seqs), np.int64, n),
            np.fromiter((s.index if s.stream is None else s.stream for s in seqs), np.int64, n),
            np.fromiter((len(s.tokens) for s in seqs), np.int64, n)], logits.device)
        if select is not None:
            logits = logits.index_select(0, select)
        out = kernels.sample(logits, temperature, top_k, top_p, min_p, seeds, streams,
                             positions, num_logprobs)
        if num_logprobs:
            tokens, chosen, top_ids, top_lps = (a.tolist() for a in kernels.to_host(*out))
            return {i: (tokens[i], chosen[i], (top_ids[i], top_lps[i])) for i in range(n)}
        tokens, chosen = (a.tolist() for a in kernels.to_host(*out[:2]))
        return {i: (tokens[i], chosen[i], None) for i in range(n)}

    # --- tokens and text ----------------------------------------------------------------
    def append(self, seq: Sequence, tok: int, logprob: float, top) -> StepEvent:
        """Appends a sampled token; returns the event, finished with its reason when the
        sequence ended (EOS, a stop token or string, max_tokens, the context's end)."""
        seq.tokens.append(tok)
        seq.cum_logprob += logprob
        k = seq.req.sampling.logprobs
        if k:
            entry = dict(zip(top[0][:k], top[1][:k], strict=True))
            entry[tok] = logprob
            seq.logprobs.append(entry)
        else:
            seq.logprobs.append(logprob)
        return self._advance(seq, tok)

    def _advance(self, seq: Sequence, tok: int) -> StepEvent:
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
                if self.stop_matcher(p.stop).feed(seq.stop_state, tok) >= 0:
                    reason = "stop"
                    seq.detok.flush()
                    text = seq.detok.text
                    hit = min((i for i in (text.find(s) for s in p.stop) if i >= 0),
                              default=len(text))
                    text = text[:hit]
            seq.text = text
        if reason is None and (seq.num_generated >= p.max_tokens
                               or len(seq.tokens) >= self.max_context):
            reason = "length"
            # The context's end (positions or the whole pool) ends a solution too.
            seq.ended_solution = len(seq.tokens) >= self.max_context
        if reason is not None:
            self.flush(seq)
        # Hold back text that could still become a stop string.
        hold = 0 if reason or not p.stop else max(len(s) for s in p.stop) - 1
        end = max(seq.emitted, len(seq.text) - hold)
        delta = seq.text[seq.emitted:end]
        seq.emitted = end
        return StepEvent(seq.req.id, seq.index, [tok], delta, reason is not None, reason)

    @staticmethod
    def flush(seq: Sequence) -> None:
        """An ended sequence's text: an incomplete character at the very end still shows."""
        if seq.detok is not None and seq.text == seq.detok.text:
            seq.detok.flush()
            seq.text = seq.detok.text

    def stop_matcher(self, stops: list[str]):
        """The core's byte-level matcher for these stop strings (the vocabulary's byte
        strings are handed to the core once per engine). Built when a request with stop
        strings enters, so a tokenizer it cannot read is an error at the door."""
        key = tuple(stops)
        m = self._stop_matchers.get(key)
        if m is None:
            if self._token_bytes is None:
                try:
                    spelled = self.tokenizer.token_bytes()
                except NotImplementedError as e:
                    raise ValueError(f"stop strings are not supported with this tokenizer: "
                                     f"{e}") from None
                # Ids past the tokenizer's vocabulary (a padded LM head) add no text.
                self._token_bytes = spelled + [b""] * max(0, self.vocab_size - len(spelled))
            m = _core.StopMatcher(self._token_bytes, [s.encode() for s in stops])
            self._stop_matchers[key] = m
        return m
