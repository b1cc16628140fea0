"""How each process reward model reads a (question, steps) pair: the token ids it runs, the
token positions where it is scored, and which head turns those positions into scores.

Every format tokenizes the whole scoring text at once, as its reference code does, and finds
a step's position by character offset, so the ids and positions are exactly what a full
re-score would use. The incremental scorer (ponder.prm.scorer) then runs only the tokens past
the longest common prefix with the parent node's ids.

Heads (applied by ``ponder.ops.prm_head``):
  ``qwen``     score = Linear(H,H), ReLU, Linear(H,2); softmax(logits)[1]
  ``skywork``  v_head.summary = Linear(H,1); sigmoid
  ``lm``       two LM-head rows (negative, positive token); softmax over the pair, positive
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ponder.tokenizer import Tokenizer

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# Ought ICE's step verifier ("verify" recipe): each prefix of the steps is shown and the model
# is asked about the last one.
SELF_VERIFY_PROMPT = ('Consider this question: "{question}"\n\nHere are the first few steps of '
                      'an answer:\n\n{steps}\n\nQ: Is step {k} correct, assuming that the '
                      'previous steps are correct? Say "A: Yes" or "A: No".')


@dataclass
class Encoded:
    ids: list[int]         # the scoring text's tokens through its last scored position
    positions: list[int]   # scored token of each of the last len(positions) steps


class PrmFormat:
    name = ""
    head = "lm"                # qwen | skywork | lm
    scores_every_step = True   # False: one text per step, scored at its end (self-verify)

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer

    def encode(self, question: str, steps: list[str]) -> Encoded:
        raise NotImplementedError

    def lm_token_ids(self) -> tuple[int, int]:
        """(negative, positive) token ids of an ``lm`` head."""
        raise NotImplementedError

    # --- helpers ------------------------------------------------------------------------
    def _single_token(self, text: str, what: str) -> int:
        ids = self.tok.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"the PRM tokenizer splits the {what} {text!r} into {len(ids)} "
                             f"tokens; the {self.name} format needs it as one token")
        return ids[0]

    def _at_chars(self, text: str, chars: list[int], add_special_tokens: bool) -> Encoded:
        """Tokenizes text; the scored token of each step is the one covering its char."""
        return self._at_chars_offsets(text, chars, add_special_tokens)[0]

    def _at_chars_offsets(self, text: str, chars: list[int], add_special_tokens: bool):
        """_at_chars and the (start, end) character span of every token of the whole text."""
        ids, offsets = self.tok.encode_offsets(text, add_special_tokens=add_special_tokens)
        starts = [s if e > s else -1 for s, e in offsets]  # added specials may have (0, 0)
        positions = []
        for c in chars:
            i = bisect.bisect_right(starts, c) - 1
            while i >= 0 and not offsets[i][0] <= c < offsets[i][1]:
                i -= 1
            if i < 0:
                raise ValueError(f"the {self.name} scoring text has no token at character {c}")
            positions.append(i)
        return Encoded(ids[:positions[-1] + 1], positions), offsets


def _check_steps(steps) -> list[str]:
    if isinstance(steps, str) or not isinstance(steps, (list, tuple)):
        raise TypeError("steps must be a list of strings")
    if not steps:
        raise ValueError("steps is empty: there is nothing to score")
    if any(not isinstance(s, str) for s in steps):
        raise TypeError("steps must be a list of strings")
    return list(steps)


class QwenFormat(PrmFormat):
    """Qwen2.5-Math-PRM: system prompt, the question, and the steps each ended by
    ``<extra_0>`` as the assistant turn; scored at every ``<extra_0>``."""

    name, head = "qwen", "qwen"
    SEP = "<extra_0>"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        if tokenizer.token_to_id(self.SEP) is None:
            raise ValueError(f"the PRM tokenizer has no step separator token {self.SEP!r} "
                             f"(format qwen)")
        if not tokenizer.chat_template:
            raise ValueError("the PRM tokenizer has no chat template (format qwen needs one)")

    def encode(self, question, steps):
        steps = _check_steps(steps)
        content = self.SEP.join(steps) + self.SEP
        text = self.tok.apply_chat_template(
            [{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": question},
             {"role": "assistant", "content": content}], add_generation_prompt=False)
        start = text.rfind(content)
        if start < 0:
            raise ValueError("the PRM chat template changed the steps; cannot place the tags")
        chars, at = [], start
        for s in steps:
            at += len(s)
            chars.append(at)
            at += len(self.SEP)
        return self._at_chars(text, chars, add_special_tokens=False)


class MathShepherdFormat(PrmFormat):
    """Math-Shepherd: ``question step1 ки\\nstep2 ки\\n...stepN ки``, scored at each tag by
    P(+) against P(-)."""

    name, head = "math-shepherd", "lm"
    TAG, GOOD, BAD = "ки", "+", "-"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        # The reference finds tags by the id of the tag's last token, and reads the logits of
        # "+ -" tokenized together: both must hold for this tokenizer.
        tag_id = tokenizer.encode(self.TAG, add_special_tokens=False)[-1]
        if tokenizer.encode(f"x {self.TAG}\n", add_special_tokens=False)[-2] != tag_id:
            raise ValueError(f"the PRM tokenizer does not keep the step tag {self.TAG!r} as its "
                             f"own last token (format math-shepherd)")
        cand = tokenizer.encode(f"{self.GOOD} {self.BAD}", add_special_tokens=False)
        if len(cand) != 2:
            raise ValueError("the PRM tokenizer does not encode '+ -' as two tokens "
                             "(format math-shepherd)")
        self._good, self._bad = cand

    def lm_token_ids(self):
        return self._bad, self._good

    def encode(self, question, steps):
        steps = _check_steps(steps)
        text, chars = f"{question} ", []
        for i, s in enumerate(steps):
            text += f"{s} {self.TAG}"
            chars.append(len(text) - 1)
            if i + 1 < len(steps):
                text += "\n"
        return self._at_chars(text, chars, add_special_tokens=True)


class RLHFlowFormat(PrmFormat):
    """RLHFlow PRMs: a chat where user turn k holds step k (the first also the question) and
    every assistant turn is ``+``; step k is scored where assistant turn k's ``+`` is
    predicted, by P(+) against P(-)."""

    name, head = "rlhflow", "lm"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        if not tokenizer.chat_template:
            raise ValueError("the PRM tokenizer has no chat template (format rlhflow needs one)")
        self._good = self._single_token("+", "good token")
        self._bad = self._single_token("-", "bad token")

    def lm_token_ids(self):
        return self._bad, self._good

    def encode(self, question, steps):
        steps = _check_steps(steps)
        msgs, chars = [], []
        for k, s in enumerate(steps):
            msgs.append({"role": "user", "content": f"{question} {s}" if k == 0 else s})
            head = self.tok.apply_chat_template(msgs, add_generation_prompt=True)
            chars.append(len(head) - 1)  # the last character before the assistant's "+"
            msgs.append({"role": "assistant", "content": "+"})
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=False)
        for c in chars:
            if text[c + 1:c + 2] != "+":
                raise ValueError("the PRM chat template does not render assistant turns after "
                                 "its generation prompt (format rlhflow)")
        enc, offsets = self._at_chars_offsets(text, chars, add_special_tokens=False)
        for p, c in zip(enc.positions, chars, strict=True):
            if p + 1 >= len(offsets) or offsets[p + 1][0] != c + 1:
                raise ValueError("the PRM tokenizer merges the assistant's '+' with the text "
                                 "before it (format rlhflow)")
        return enc


class SkyworkFormat(PrmFormat):
    """Skywork-o1-Open-PRM: BOS, the question and a newline, then each step tokenized on its
    own and ended by the newline token; a value head (sigmoid) at each step's last token."""

    name, head = "skywork", "skywork"
    STEP = "\n"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self._step_id = tokenizer.encode(self.STEP, add_special_tokens=False)[-1]
        self._bos = tokenizer.special_tokens.get("bos_token", "")

    def encode(self, question, steps):
        steps = _check_steps(steps)
        ids = self.tok.encode(self._bos + question + "\n", add_special_tokens=False)
        positions = []
        for s in steps:
            ids = ids + self.tok.encode(s, add_special_tokens=False) + [self._step_id]
            positions.append(len(ids) - 1)
        return Encoded(ids, positions)


class SelfVerifyFormat(PrmFormat):
    """A language model (by default the policy itself) asked whether the latest step is
    correct, with Ought ICE's verifier prompt; score = P(" Yes") / (P(" Yes") + P(" No")) after
    ``A:``. A chat model gets the question as the user turn and ``A:`` as the start of its
    answer. One text per step: earlier steps' scores come from their own texts."""

    name, head, scores_every_step = "self-verify", "lm", False

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self._yes = self._single_token(" Yes", "answer")
        self._no = self._single_token(" No", "answer")

    def lm_token_ids(self):
        return self._no, self._yes

    def encode(self, question, steps):
        steps = _check_steps(steps)
        body = "\n".join(f"{i + 1}. {s.strip()}" for i, s in enumerate(steps))
        prompt = SELF_VERIFY_PROMPT.format(question=question, steps=body, k=len(steps))
        if self.tok.chat_template:
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": "A:"}],
                add_generation_prompt=False, continue_final_message=True)
            ids = self.tok.encode(text, add_special_tokens=False)
        else:
            ids = self.tok.encode(prompt + "\nA:")
        return Encoded(ids, [len(ids) - 1])


FORMATS = {f.name: f for f in (QwenFormat, MathShepherdFormat, RLHFlowFormat, SkyworkFormat,
                               SelfVerifyFormat)}
BY_ARCHITECTURE = {"Qwen2ForProcessRewardModel": "qwen", "Qwen2ForPrmModel": "skywork"}


def resolve_format(prm_format: str | None, architecture: str) -> str:
    if prm_format is not None:
        if prm_format not in FORMATS:
            raise ValueError(f"prm_format must be one of {sorted(FORMATS)}, got {prm_format!r}")
        return prm_format
    if architecture in BY_ARCHITECTURE:
        return BY_ARCHITECTURE[architecture]
    raise ValueError(f"cannot tell the PRM format from config.json (architecture "
                     f"{architecture!r}); pass prm_format= one of {sorted(FORMATS)}")
