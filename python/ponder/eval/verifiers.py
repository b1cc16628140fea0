"""Step verifiers for `ponder eval`: the arithmetic equation checker and the import of a
user's ``verifier(question, steps) -> list[float]`` by ``module:function``.

The equation checker does not know the answers: it recomputes every equation a step writes
("12 - 5 = 7", "3 x 4 = 12", "2 + 3 + 4 = 9", "$1,200 / 4 = $300") and scores the step
1.0 when all are right, 0.0 when one is wrong, 0.5 when it writes none.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from fractions import Fraction

EQUATIONS = "equations"

Verifier = Callable[[str, list[str]], list[float]]

# One token of the arithmetic a step may write. Numbers take thousands commas only in groups
# of three ("1,200"), so "3,4" stays two numbers; "x" is a times sign only when not part of a
# word. "$" is skipped so money reads as numbers; anything else ends the current run.
_TOKEN = re.compile(r"""
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)
  | (?P<op>\\times|\\cdot|\\div|[-+*/×÷·−]|(?<![A-Za-z])[xX](?![A-Za-z]))
  | (?P<eq>=)
  | (?P<paren>[()])
  | (?P<space>[\s$]+)
""", re.VERBOSE)

_OPS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "·": "*", "x": "*", "X": "*",
        "÷": "/", "−": "-"}


def _tokenize_runs(text: str) -> list[list[tuple[str, str]]]:
    """Split ``text`` into maximal runs of arithmetic tokens (kind, value)."""
    runs: list[list[tuple[str, str]]] = [[]]
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if runs[-1]:
                runs.append([])
            pos += 1
            continue
        pos = m.end()
        kind = m.lastgroup
        if kind == "space":
            continue
        value = m.group(kind)
        if kind == "op":
            value = _OPS.get(value, value)
        runs[-1].append((kind, value))
    return [r for r in runs if r]


class _Expr:
    """A parsed expression: its exact value, whether it holds a binary operation, the decimals
    written when it is a bare number (a rounded result such as "3.33"), and its first operand
    (for a running total, "5 + 3 = 8 + 2 = 10", where "8" is what the left side equals)."""

    __slots__ = ("value", "has_op", "decimals", "first")

    def __init__(self, value: Fraction, has_op: bool, decimals: int | None = None,
                 first: _Expr | None = None):
        self.value, self.has_op, self.decimals, self.first = value, has_op, decimals, first


# The most tokens one side of an equation may have: bounds the work on long runs of numbers
# (and the parser's recursion on deep parentheses).
_MAX_SIDE = 64

# Stands for a side that divides by zero: never equal to anything.
_DIV0 = _Expr(Fraction(0), True)


def _parse(tokens: list[tuple[str, str]]) -> _Expr | None:
    """``tokens`` as one whole expression (precedence, unary signs, parentheses), None if they
    are not one, or _DIV0 if it divides by zero."""
    pos = 0
    has_op = div_by_zero = False
    depth = 0
    first_end: int | None = None

    def peek() -> tuple[str, str] | None:
        return tokens[pos] if pos < len(tokens) else None

    def binary(operand, ops: tuple[str, str]) -> Fraction | None:
        nonlocal pos, has_op, div_by_zero
        left = operand()
        while left is not None and peek() in (("op", ops[0]), ("op", ops[1])):
            op = tokens[pos][1]
            pos += 1
            right = operand()
            if right is None:
                return None
            has_op = True
            if op == "+":
                left = left + right
            elif op == "-":
                left = left - right
            elif op == "*":
                left = left * right
            elif right == 0:
                div_by_zero = True  # wrong, if the tokens turn out to be an expression
                left = Fraction(0)
            else:
                left = left / right
        return left

    def expr() -> Fraction | None:
        return binary(term, ("+", "-"))

    def term() -> Fraction | None:
        return binary(unary, ("*", "/"))

    def unary() -> Fraction | None:
        nonlocal depth, first_end
        depth += 1
        value = primary()
        depth -= 1
        if depth == 0 and first_end is None and value is not None:
            first_end = pos  # the first operand at the top level ends here
        return value

    def primary() -> Fraction | None:
        nonlocal pos
        tok = peek()
        if tok in (("op", "-"), ("op", "+")):
            pos += 1
            inner = unary()
            if inner is None:
                return None
            return -inner if tok[1] == "-" else inner
        if tok == ("paren", "("):
            pos += 1
            inner = expr()
            if inner is None or peek() != ("paren", ")"):
                return None
            pos += 1
            return inner
        if tok is not None and tok[0] == "num":
            pos += 1
            return Fraction(tok[1].replace(",", ""))
        return None

    value = expr()
    if value is None or pos != len(tokens):
        return None
    if div_by_zero:
        return _DIV0
    if not has_op and tokens[-1][0] == "num" and all(t[0] == "op" for t in tokens[:-1]):
        text = tokens[-1][1]  # a bare number ("-0.67"): how precisely it was written
        return _Expr(value, False, len(text) - text.index(".") - 1 if "." in text else 0)
    first = None
    if has_op and first_end is not None and first_end < len(tokens):
        first = _parse(tokens[:first_end])
    return _Expr(value, has_op, None, first)


def _longest(tokens: list[tuple[str, str]], suffix: bool) -> _Expr | None:
    """The longest suffix (left of an "=") or prefix (right of one) that is an expression;
    None if there is none, or if it may run on past the _MAX_SIDE tokens looked at."""
    window = tokens[-_MAX_SIDE:] if suffix else tokens[:_MAX_SIDE]
    n = len(window)
    for size in range(n, 0, -1):
        parsed = _parse(window[n - size:] if suffix else window[:size])
        if parsed is not None:
            return None if size == _MAX_SIDE < len(tokens) else parsed
    return None


def _equal(a: _Expr, b: _Expr) -> bool:
    if a is _DIV0 or b is _DIV0:
        return False
    if a.value == b.value:
        return True
    # A bare decimal may be a rounded result: "10 / 3 = 3.33" and "2 / 3 = 0.667" are right,
    # "2 / 3 = 0.66" is not; a tie may round either way ("1 / 8 = 0.12" or "0.13").
    rounded = [e for e in (a, b) if e.decimals]
    if not rounded:
        return False
    r = min(rounded, key=lambda e: e.decimals)
    exact = (b if r is a else a).value
    scale = 10 ** r.decimals
    half_even = Fraction(round(exact * scale), scale)
    half_away = Fraction((1 if exact >= 0 else -1) * math.floor(abs(exact) * scale
                                                                + Fraction(1, 2)), scale)
    return r.value in (half_even, half_away)


def _link_ok(left: _Expr, right: _Expr) -> bool:
    """Whether ``left = right`` holds, reading "... = 8 + 2 = 10" as a running total."""
    return _equal(left, right) or (right.first is not None and _equal(left, right.first))


def _chains(run: list[tuple[str, str]]) -> list[list[_Expr]]:
    """The equation chains ``e0 = e1 = ... = ek`` written in one run of tokens. The text
    around an equation may end in numbers ("Day 3 4 * 5 = 20 more"): the left side is the
    longest expression that ends at the "=", the right side the longest that starts at it."""
    parts: list[list[tuple[str, str]]] = [[]]
    for tok in run:
        if tok[0] == "eq":
            parts.append([])
        else:
            parts[-1].append(tok)
    chains: list[list[_Expr]] = []
    chain: list[_Expr] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        whole = _parse(part) if 0 < i and not last and len(part) <= _MAX_SIDE else None
        if whole is not None:  # "= 3 + 4 =": the chain goes on through this part
            chain.append(whole)
            continue
        if i > 0:
            head = _longest(part, suffix=False)
            if chain and head is not None:
                chain.append(head)
            chains.append(chain)
        # The chain is cut here; a new one may start at the end of this part.
        tail = None if last else _longest(part, suffix=True)
        chain = [tail] if tail is not None else []
    chains.append(chain)
    # "3 = 3" or "page 1 = 1" writes no arithmetic; only chains with an operation count.
    return [c for c in chains if len(c) >= 2 and any(e.has_op for e in c)]


def check_equations(text: str) -> float:
    """1.0 if every equation in ``text`` is right, 0.0 if one is wrong, 0.5 if it has none."""
    found = False
    for run in _tokenize_runs(text):
        for chain in _chains(run):
            found = True
            if not all(_link_ok(a, b) for a, b in zip(chain, chain[1:], strict=False)):
                return 0.0
    return 1.0 if found else 0.5


def equation_checker(question: str, steps: list[str]) -> list[float]:
    """Score each step by recomputing the equations it writes; knows nothing of the answer.

    Parameters
    ----------
    question : str
        The problem (unused: the checker judges the steps' arithmetic alone).
    steps : list[str]
        The solution's steps so far.

    Returns
    -------
    list[float]
        One score per step: 0.0 if an equation in it is wrong (a division by zero included),
        1.0 if it writes equations and all are right, 0.5 if it writes none.

    Notes
    -----
    An equation is a chain ``e0 = e1 = ...`` of expressions with at least one operation
    (``+ - * / x × ÷ − \\times \\div \\cdot``, parentheses, unary signs, usual precedence).
    Numbers may carry thousands commas ("1,200"), decimals and a ``$``. A bare decimal may
    be rounded to the places it shows ("10 / 3 = 3.33"). "5 + 3 = 8 + 2 = 10" reads as a
    running total. Text around an equation is skipped: its sides are the longest expressions
    that end and start at the "=" (up to 64 tokens; a longer side is not judged).

    Examples
    --------
    >>> equation_checker("", ["5 + 8 = 13", "13 x 2 = 27", "So the answer is 26."])
    [1.0, 0.0, 0.5]
    """
    return [check_equations(step) for step in steps]


def builtin(name: str) -> Verifier | None:
    """The verifier shipped under ``name`` ("equations"), or None for any other name."""
    return equation_checker if name == EQUATIONS else None


def import_verifier(spec: str) -> Verifier:
    """Import ``"package.module:function"`` and return the callable it names."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"verifier {spec!r}: expected 'module:function' (one colon)")
    module_name, attr = (s.strip() for s in spec.split(":"))
    if not module_name or not attr:
        raise ValueError(f"verifier {spec!r}: expected 'module:function', both non-empty")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an import error or one raised by the module's own code
        raise ValueError(f"verifier {spec!r}: cannot import module {module_name!r}: "
                         f"{type(e).__name__}: {e}") from e
    obj = module
    for name in attr.split("."):
        if not hasattr(obj, name):
            raise ValueError(f"verifier {spec!r}: module {module_name!r} has no attribute "
                             f"{attr!r}")
        obj = getattr(obj, name)
    if not callable(obj):
        raise ValueError(f"verifier {spec!r}: {attr!r} is a {type(obj).__name__}, "
                         "not a callable")
    return obj
