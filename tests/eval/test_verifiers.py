import random
import re
from fractions import Fraction

import pytest

from ponder.eval.data import load_problems
from ponder.eval.verifiers import (
    EQUATIONS,
    builtin,
    check_equations,
    equation_checker,
    import_verifier,
)

RIGHT = [
    "5 + 8 = 13", "12 - 5 = 7", "6 * 7 = 42", "6 x 7 = 42", "6x7=42", "6 X 7 = 42",
    "6 × 7 = 42", "42 / 6 = 7", "42 ÷ 6 = 7", "9 − 4 = 5", "3 \\times 4 = 12",
    "3 \\cdot 4 = 12", "12 \\div 4 = 3", "$3 \\times 4 = 12$",
    "1,200 + 300 = 1,500", "$1,200 / 4 = $300", "12,000 - 1 = 11,999",
    "1.5 + 2.25 = 3.75", "0.1 + 0.2 = 0.3", "7 / 2 = 3.5", "6 * 7 = 42.0",
    "-5 + 3 = -2", "10 - -3 = 13", "4 * -2 = -8", "-4 x -2 = 8",
    "2 + 3 + 4 = 9", "2 + 3 * 4 = 14", "(2 + 3) * 4 = 20", "20 - 5 - 3 = 12",
    "24 / 2 / 3 = 4", "2 * (3 + 4) - 1 = 13",
    "10 / 3 = 3.33", "2 / 3 = 0.667", "-2 / 3 = -0.67",  # rounded, to the places written
    "1 / 8 = 0.12", "1 / 8 = 0.13", "3.75 * 1 = 3.8",  # a tie rounds either way
    "Total = 3 + 4 = 7", "5 + 3 = 8 = 8", "3 + 5 = 2 * 4",
    "5 + 3 = 8 + 2 = 10",  # a running total
    "So 4 × 6 = 24 marbles, and 24 - 5 = 19 are left.",
    "ratio 1/0 4 + 3 = 7",  # the left side is "4 + 3", not the "1/0" before it
    "Step 1: 3 + 4 = 7.", "1) 3 + 4 = 7", "**3 + 4 = 7**", "Day 3 4 * 5 = 20 more",
    "She has 5 apples and gets 8 more: 5 + 8 = 13 apples.",
    "The answer is 7, since 3 + 4 = 7",
]

WRONG = [
    "5 + 8 = 14", "12 - 5 = 8", "6 * 7 = 43", "6 x 7 = 48", "42 / 6 = 6", "42 ÷ 6 = 8",
    "1,200 + 300 = 1,600", "1.5 + 2.25 = 3.7", "-5 + 3 = 2", "10 - -3 = 7",
    "2 + 3 + 4 = 10", "2 + 3 * 4 = 20", "(2 + 3) * 4 = 14",
    "2 / 3 = 0.66", "3.75 * 1 = 3.7", "2 / 3 = 0.6",  # truncated, not rounded
    "10 / 3 = 3",
    "6 / 0 = 0", "5 + 6 / 0 = 5",  # division by zero is never right
    "Total = 3 + 4 = 8", "3 + 4 = 7 = 8", "5 + 3 = 9 + 2 = 11", "5 + 3 = 8 + 2 = 11",
    "3 + 4 = 7 and 2 * 3 = 7",  # one wrong equation is enough
    "3 \\times 4 = 13",
]

NONE = [
    "", "Let's think step by step.", "There are 7 apples.", "The answer is 42.",
    "x = 5", "page 1 = 1", "3 = 3", "1 dozen = 12", "6 boxes x 7 = 42",
    "Call 555-1234 today", "5 / 0 = ?", "In 2023-01-05 we met.",
    "a ratio of 1/0 4 = 4",  # "1/0 4" is no expression; "4 = 4" no arithmetic
]


@pytest.mark.parametrize("text", RIGHT)
def test_right_equations(text):
    assert check_equations(text) == 1.0


@pytest.mark.parametrize("text", WRONG)
def test_wrong_equations(text):
    assert check_equations(text) == 0.0


@pytest.mark.parametrize("text", NONE)
def test_no_equations(text):
    assert check_equations(text) == 0.5


def test_thousands_commas_only_in_groups_of_three():
    # "3,4" is a list, not 34: the equation is "4 + 1 = 5".
    assert check_equations("the numbers 3,4 + 1 = 5") == 1.0
    assert check_equations("the numbers 3,4 + 1 = 35") == 0.0


def test_long_runs_are_bounded_not_misread():
    # A side longer than the checker looks at is unknown, never a truncated (wrong) sum.
    assert check_equations("1 + " * 300 + "1 = 301") == 0.5
    assert check_equations("1 + " * 31 + "1 = 32") == 1.0
    assert check_equations("(" * 3000 + "1" + ")" * 3000 + " + 1 = 2") == 0.5
    assert check_equations("= " + "(" * 3000 + "1 = 2") == 0.5
    assert check_equations("3 + 4 = 7. " * 300) == 1.0
    assert check_equations("3 + 4 = 7. " * 300 + "2 * 2 = 5") == 0.0


def _fmt(value: Fraction, rng: random.Random) -> str:
    """``value`` written as a number: an int (maybe with thousands commas) or a decimal."""
    if value.denominator == 1:
        n = int(value)
        return f"{n:,}" if abs(n) >= 1000 and rng.random() < 0.5 else str(n)
    return str(float(value))


def test_every_form_the_demo_reads():
    """The demo's checker reads "a op b = c" (ops + - * x × /, signed ints or decimals, commas
    dropped, any spacing); on all of them this checker gives the exact verdict."""
    rng = random.Random(0)
    for _ in range(2000):
        op = rng.choice(["+", "-", "*", "x", "×", "/"])
        a = Fraction(rng.randint(-2000, 2000), rng.choice([1, 1, 1, 2, 4]))
        b = Fraction(rng.randint(-50, 50), rng.choice([1, 1, 2]))
        if op == "/":
            if b == 0:
                continue
            a = b * rng.randint(-40, 40)  # exact quotients, as the demo's 1e-9 test needs
        if op == "+":
            value = a + b
        elif op == "-":
            value = a - b
        elif op == "/":
            value = a / b
        else:
            value = a * b
        claimed = value if rng.random() < 0.5 else value + rng.choice([-3, -1, 1, 2, 10])
        sp = [rng.choice(["", " ", "  "]) for _ in range(3)]
        text = f"{_fmt(a, rng)}{sp[0]}{op}{sp[1]}{_fmt(b, rng)}{sp[2]}={sp[0]}" \
               f"{_fmt(claimed, rng)}"
        if op == "x" and not sp[0]:
            text = text.replace("x", " x ")  # "2x3" reads as 2 x 3, "2.5x3" as well
        assert check_equations(f"So {text}.") == (1.0 if claimed == value else 0.0), text


def test_equation_checker_scores_each_step():
    steps = ["Sam has 5 apples and gets 8 more.", "5 + 8 = 13", "13 x 2 = 27",
             "The answer is 26."]
    assert equation_checker("any question", steps) == [0.5, 1.0, 0.0, 0.5]
    assert equation_checker("q", []) == []


# Worked solutions for rows of the bundled set: (id, numbers the problem must state,
# right steps, the same with one slip).
WORKED = [
    ("arith-0000", ["4 stamps", "4 packs with 6 stamps", "gives 27"],
     ["He buys 4 * 6 = 24 stamps.", "He then has 4 + 24 = 28 stamps.",
      "After giving 27 away: 28 - 27 = 1. The answer is 1."],
     ["He buys 4 * 6 = 24 stamps.", "He then has 4 + 24 = 29 stamps.",
      "After giving 27 away: 29 - 27 = 2. The answer is 2."]),
    ("arith-0001", ["6 dollars an hour on Monday and works 9 hours",
                    "3 dollars an hour and works 3 hours"],
     ["Monday: 6 x 9 = 54 dollars.", "Tuesday: 3 x 3 = 9 dollars.",
      "In all: 54 + 9 = 63. The answer is 63."],
     ["Monday: 6 x 9 = 56 dollars.", "Tuesday: 3 x 3 = 9 dollars.",
      "In all: 56 + 9 = 65. The answer is 65."]),
    ("arith-0002", ["2 times 3"], ["2 × 3 = 6. The answer is 6."],
     ["2 × 3 = 5. The answer is 5."]),
    ("arith-0004", ["costs 9 dollars", "buys 4", "50-dollar bill"],
     ["4 stickers cost 4 * $9 = $36.", "The change is $50 - $36 = $14. The answer is 14."],
     ["4 stickers cost 4 * $9 = $36.", "The change is $50 - $36 = $24. The answer is 24."]),
    ("arith-0006", ["24 crayons", "3 friends"], ["24 ÷ 3 = 8. The answer is 8."],
     ["24 ÷ 3 = 6. The answer is 6."]),
    ("arith-0008", ["5 rows of 2 chairs", "2 of the chairs"],
     ["There are 5 * 2 = 10 chairs.", "Empty: 10 - 2 = 8. The answer is 8."],
     ["There are 5 * 2 = 10 chairs.", "Empty: 10 - 2 = 7. The answer is 7."]),
]


@pytest.mark.parametrize("pid, facts, right, wrong", WORKED, ids=[w[0] for w in WORKED])
def test_worked_solutions_of_bundled_problems(pid, facts, right, wrong):
    problem = {p.id: p for p in load_problems("arith")}[pid]
    for fact in facts:  # the solution below solves this problem
        assert fact in problem.question
    assert re.findall(r"answer is (\d+)", right[-1]) == [problem.answer]
    assert equation_checker(problem.question, right) == [1.0] * len(right)
    scores = equation_checker(problem.question, wrong)
    assert 0.0 in scores
    assert re.findall(r"answer is (\d+)", wrong[-1]) != [problem.answer]


def test_builtin():
    assert EQUATIONS == "equations"
    assert builtin(EQUATIONS) is equation_checker
    assert builtin("prm") is None and builtin("confidence") is None


# --- import_verifier --------------------------------------------------------------------

def test_import_verifier():
    assert import_verifier("ponder.eval.verifiers:equation_checker") is equation_checker
    assert import_verifier(" ponder.eval.verifiers : equation_checker ") is equation_checker
    assert import_verifier("fractions:Fraction.from_float") == Fraction.from_float


@pytest.mark.parametrize("spec, message", [
    ("ponder.eval.verifiers", r"'ponder.eval.verifiers': expected 'module:function' \(one "
                              r"colon\)"),
    ("a:b:c", r"'a:b:c': expected 'module:function'"),
    (":equation_checker", r"both non-empty"),
    ("ponder.eval.verifiers:", r"both non-empty"),
    ("no_such_module_xyz:f", r"'no_such_module_xyz:f': cannot import module "
                             r"'no_such_module_xyz': ModuleNotFoundError"),
    ("ponder.eval.verifiers:nope", r"'ponder.eval.verifiers:nope': module "
                                   r"'ponder.eval.verifiers' has no attribute 'nope'"),
    ("ponder.eval.verifiers:EQUATIONS", r"'EQUATIONS' is a str, not a callable"),
])
def test_import_verifier_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        import_verifier(spec)


def test_import_verifier_module_that_raises(tmp_path, monkeypatch):
    (tmp_path / "broken_verifier_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"cannot import module 'broken_verifier_mod': "
                                         r"RuntimeError: boom"):
        import_verifier("broken_verifier_mod:verify")


def test_import_verifier_not_a_str():
    with pytest.raises(ValueError, match="expected 'module:function'"):
        import_verifier(None)
