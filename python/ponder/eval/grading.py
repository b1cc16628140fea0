"""Answers: extraction from a solution's text, correctness by math-verify, canonical forms.

math-verify bounds its parsing and comparison time with ``signal.alarm`` (its
``parsing_timeout`` / ``timeout_seconds``, whole seconds). Signals can only be installed from
the main thread, so from any other thread math-verify raises ``ValueError`` even when its
``raise_on_error`` is False. Here, the main thread uses those timeouts; another thread calls
math-verify with them disabled (``None``), after refusing expressions whose evaluation has no
useful bound (power towers, large symbolic powers), and every failure or timeout grades as
"not correct" rather than raising.
"""

from __future__ import annotations

import functools
import re
import threading

from ponder.search import answers

TIMEOUT_S = 3  # per parse / comparison, in the main thread (signal.alarm takes whole seconds)
_MAX_CHARS = 400  # longer answers are compared as strings only

_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_SPACES = re.compile(r"\\[,;:! ]|\s+")


# --- extraction ----------------------------------------------------------------------------
def extract_answer(text: str) -> str:
    """The answer a solution states.

    The content of its last ``\\boxed{...}`` (nested braces kept), else what follows its last
    "The answer is" / "the final answer is" up to the end of that sentence (``$``, ``\\boxed``
    and a trailing period stripped), else its last number, else "". A plain number loses its
    thousands commas and a trailing ``.0``.

    Examples
    --------
    >>> extract_answer("so $x = \\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer("The answer is $1,200.0$. Done")
    '1200'
    >>> extract_answer("3 + 4 = 7 apples")
    '7'
    """
    boxed = answers.last_boxed(text)
    if boxed is not None:
        return _plain_number(boxed.strip())
    stated = _stated_answer(text)
    if stated:
        return stated
    # boxed is absent, so the search extractor's fallback is exactly "the last number"
    return answers.extract_answer(text)


def _stated_answer(text: str) -> str:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return ""
    rest = text[matches[-1].end():]
    end = _SENTENCE_END.search(rest)
    s = rest[:end.start()] if end else rest
    s = s.replace("\\boxed", "").replace("$", "").replace("**", "").strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    return _plain_number(s.rstrip(".").strip())


def _plain_number(s: str) -> str:
    """A bare number without its thousands commas and trailing zeros after the point."""
    if not _NUMBER.fullmatch(s):
        return s
    s = s.replace(",", "").lstrip("+")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


# --- normalisation (the fast path and the fallback) ------------------------------------------
def _normalize(answer: str) -> str:
    """A light textual normal form: equal strings here are equal answers."""
    s = answer.strip()
    boxed = answers.last_boxed(s)
    if boxed is not None and s.startswith("\\boxed"):
        s = boxed
    s = s.strip().strip("$").strip()
    s = s.replace("\\$", "").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "")
    s = _SPACES.sub("", s).rstrip(".")
    return _plain_number(s)


# --- math-verify -----------------------------------------------------------------------------
def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _parse(answer: str) -> list:
    """math-verify's parse of one answer, wrapped in ``\\boxed{}`` so that a bare ``13``,
    ``1/2`` or ``x=5`` is taken whole (as the math-verify README does with gold answers).
    [] when nothing parses, the answer is too long, or (off the main thread) it could not be
    evaluated in bounded time."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    if not answer or len(answer) > _MAX_CHARS:
        return []
    text = answer if "\\boxed" in answer else f"\\boxed{{{answer}}}"
    main = _in_main_thread()
    try:
        parsed = parse(text, parsing_timeout=TIMEOUT_S if main else None)
    except (Exception, TimeoutException):
        return []
    if not main and not all(_bounded(p) for p in parsed):
        return []
    return parsed


def _bounded(expr) -> bool:
    """Whether comparing expr is cheap enough to run without a timeout: no power towers
    (``10^{10^{10}}``), no symbolic powers above 64 (``(x+1)^{1000}`` takes seconds to expand)
    and no factorials, sums or products of more than a million terms."""
    import sympy

    if isinstance(expr, str) or not isinstance(expr, sympy.Basic):
        return True
    big_ops = (sympy.factorial, sympy.gamma, sympy.Sum, sympy.Product, sympy.binomial)
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            e = node.exp
            if e.has(sympy.Pow, *big_ops):
                return False
            if node.base.free_symbols and e.is_Number and abs(e) > 64:
                return False
        elif isinstance(node, big_ops):
            if any(a.is_Number and abs(a) > 10**6 for a in node.atoms(sympy.Number)):
                return False
    return True


def _verify(gold: list, pred: list) -> bool:
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        return bool(verify(gold, pred, timeout_seconds=TIMEOUT_S if _in_main_thread() else None))
    except (Exception, TimeoutException):
        return False


def is_correct(pred: str, truth: str) -> bool:
    """Whether the predicted answer equals the true one, by math-verify.

    Equal light normal forms (``13`` and ``13.0``, ``\\$13`` and ``13``) are equal without
    math-verify. Otherwise both are parsed (each wrapped in ``\\boxed{}``) and compared with
    ``verify(gold, pred)``, so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are equal, and
    ``13 apples`` equals ``13``. An empty prediction, a parse failure or a timeout is not
    correct; nothing raises, from any thread.
    """
    try:
        if not isinstance(pred, str) or not isinstance(truth, str):
            return False
        p, t = _normalize(pred), _normalize(truth)
        if not p or not t:
            return False
        if p == t:
            return True
        gold, target = _parse(truth.strip()), _parse(pred.strip())
        return bool(gold and target) and _verify(gold, target)
    except Exception:
        return False


@functools.lru_cache(maxsize=65536)
def canonical(answer: str) -> str:
    """A canonical form of an answer, for grouping equal answers (majority and weighted votes).

    Like search-and-learn's ``memoized_canonical_form`` (LaTeX -> sympy -> simplify, with a
    textual fallback): an answer math-verify parses is simplified with sympy, numbers made
    exact (``0.5``, ``1/2``, ``\\frac{1}{2}`` -> ``1/2``; ``13.0`` -> ``13``) and an assignment
    ``x = 5`` reduced to ``5``; anything else (or on failure, timeout or an unbounded
    expression) keeps its light textual normal form. "" stays "".
    """
    norm = _normalize(answer)
    if not norm:
        return ""
    from math_verify.errors import TimeoutException  # a BaseException

    try:
        parsed = [p for p in _parse(answer.strip()) if not isinstance(p, str)]
        if not parsed or not _bounded(parsed[0]):  # skip the timeout's seconds, too
            return norm
        return _sympy_form(parsed[0])
    except (Exception, TimeoutException):
        return norm


def _sympy_form(expr) -> str:
    import sympy
    from math_verify.utils import timeout

    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs
    expr = expr.replace(lambda e: isinstance(e, sympy.Float),
                        lambda f: sympy.Rational(str(f)))

    def simplest():
        if isinstance(expr, sympy.Expr) and sympy.count_ops(expr) <= 50:
            return sympy.simplify(expr)
        return expr

    simplified = timeout(TIMEOUT_S if _in_main_thread() else None)(simplest)()
    return sympy.sstr(simplified)
