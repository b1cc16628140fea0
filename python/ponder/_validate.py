"""Argument checks shared by Sampling, the search specs and Engine, so that each rule exists
once. Every check names the argument: a value of the wrong type is a TypeError, one out of
range a ValueError. Each returns the value normalized (a Python int, float or bool, a list of
strings), so numpy scalars are accepted but never passed on."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np

INT32_MAX = 2**31 - 1   # counts and token ids the C++ core holds as int32
INT64_MAX = 2**63 - 1   # budgets it holds as int64; seeds go to the sampler as int64


def _describe(v) -> str:
    return f"{type(v).__name__} {v!r}"


def _is_int(v) -> bool:
    # bool is an Integral, but True is not a count.
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_int(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    """v as an int in [lo, hi] (a None end is open)."""
    if not _is_int(v):
        raise TypeError(f"{name} must be an int, got {_describe(v)}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be an int {_interval(lo, hi, False, False, str)}, "
                         f"got {v}")
    return v


def check_float(name: str, v, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """v as a finite float in the interval from lo to hi (open at an end with *_open; a None
    end is unbounded). Ints are accepted; bools and non-finite values are not."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(v)}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        raise ValueError(f"{name} must be {_interval(lo, hi, lo_open, hi_open, '{:g}'.format)}"
                         f", got {v!r}")
    return v


def _interval(lo, hi, lo_open: bool, hi_open: bool, fmt) -> str:
    """The allowed range in words: ">= 1", "<= 5", "in (0, 1]"."""
    if hi is None:
        return f"{'>' if lo_open else '>='} {fmt(lo)}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {fmt(hi)}"
    return f"in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"


def check_bool(name: str, v) -> bool:
    # Only True and False (numpy's too): 1 and "no" are not answers to a yes/no question.
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_describe(v)}")
    return bool(v)


def check_seed(name: str, v, allow_none: bool = True) -> int | None:
    """None (where allowed) or an int in [0, 2**63): the sampler keys its generator by int64."""
    if v is None and allow_none:
        return None
    if not _is_int(v):
        none = "None or " if allow_none else ""
        raise TypeError(f"{name} must be {none}an int in [0, 2**63), got {_describe(v)}")
    v = int(v)
    if not 0 <= v <= INT64_MAX:
        raise ValueError(f"{name} must be in [0, 2**63), got {v}")
    return v


def check_choice(name: str, v, choices) -> str:
    """v, one of the strings in choices."""
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(choices)}; got {_describe(v)}")
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
    return v


def check_strings(name: str, v, allow_empty_list: bool = True) -> list[str]:
    """A str or a list of non-empty strs, as a list (None: the empty list, where allowed)."""
    if v is None and allow_empty_list:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"{name} must be a str or a list of str, got {_describe(v)}")
    for i, s in enumerate(v):
        if not isinstance(s, str):
            raise TypeError(f"{name}[{i}] must be a str, got {_describe(s)}")
        if not s:
            raise ValueError(f"{name} must hold non-empty strings; {name}[{i}] is empty")
    if not v and not allow_empty_list:
        raise ValueError(f"{name} must hold at least one string")
    return list(v)


def check_int_list(name: str, v, lo: int | None = None, hi: int | None = None) -> list[int]:
    """An iterable of ints (not a str) in [lo, hi], as a list (None: the empty list)."""
    if v is None:
        return []
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise TypeError(f"{name} must be a list of ints, got {_describe(v)}")
    return [check_int(f"{name}[{i}]", t, lo, hi) for i, t in enumerate(v)]
