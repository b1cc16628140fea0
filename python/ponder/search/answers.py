"""Answer extraction: the last \\boxed{...} of a solution, else its last number."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth, j = 0, i
    while j < len(text):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
        j += 1
    return None


def extract_answer(text: str) -> str:
    """The answer a solution gives: its last ``\\boxed{}`` content, else its last number
    (commas dropped, a trailing ``.0`` removed), else ""."""
    boxed = last_boxed(text)
    if boxed is not None:
        return _normalize(boxed)
    nums = _NUMBER.findall(text)
    return _normalize(nums[-1]) if nums else ""


def _normalize(a: str) -> str:
    a = a.strip().replace(",", "").rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", a):
        a = a.split(".")[0]
    return a
