"""Answer extraction, math-verify grading (main thread and worker threads), canonical forms."""

import threading
import time

import pytest

from ponder.eval import grading
from ponder.eval.grading import canonical, extract_answer, is_correct


@pytest.mark.parametrize("text, want", [
    ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{3}, then \\boxed{\\frac{\\sqrt{2}}{2}} at last", "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{1,000.0}", "1000"),
    ("\\boxed{(1, 2)}", "(1, 2)"),
    ("\\boxed{7} but The answer is 8.", "7"),  # boxed wins over a stated answer
    ("The answer is $1,200.0$. Done", "1200"),
    ("We get 5, so the final answer is: **42**.\nCheck: 6", "42"),
    ("the answer is 3.5.", "3.5"),
    ("The answer is \\boxed 12.", "12"),
    ("The answer is 4. Later, The answer is $\\frac{3}{4}$. 9", "\\frac{3}{4}"),
    ("The answer is (1, 2). Then 5", "(1, 2)"),
    ("3 + 4 = 7 apples", "7"),
    ("it costs 1,234 dollars and 5.0 cents", "5"),
    ("-12 degrees", "-12"),
    ("The answer is", ""),  # nothing stated and no number
    ("no numbers here", ""),
    ("", ""),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


EQUAL = [
    ("1/2", "0.5"), ("0.5", "1/2"), ("\\frac{1}{2}", "0.5"), ("0.5", "\\frac{1}{2}"),
    ("\\frac{1}{2}", "1/2"), ("\\dfrac12", "1/2"),
    ("13", "13.0"), ("13.0", "13"), ("\\$13", "13"), ("$13$", "13"), ("13 apples", "13"),
    ("13\\text{ apples}", "13"), ("1,000", "1000"), ("\\boxed{13}", "13"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("x = 5", "5"), ("-3", "-3.00"),
]
DIFFERENT = [
    ("14", "13"), ("0.33", "1/3"), ("-3", "3"), ("\\frac{1}{3}", "0.5"), ("", "13"),
    ("13", ""), ("abc", "13"), ("1000", "100"), ("2.0000001", "2"),
]


@pytest.mark.parametrize("pred, truth", EQUAL)
def test_equal_answers(pred, truth):
    assert is_correct(pred, truth)


@pytest.mark.parametrize("pred, truth", DIFFERENT)
def test_different_answers(pred, truth):
    assert not is_correct(pred, truth)


def test_bad_input_is_not_correct():
    assert not is_correct(None, "1")
    assert not is_correct("1", None)
    assert not is_correct("\\frac{", "1")
    assert not is_correct("1" * 5000, "1")


def test_math_verify_cannot_time_out_off_the_main_thread():
    """The reason grading passes timeouts of None off the main thread: math-verify's
    signal.alarm timeouts raise ValueError there, even with raise_on_error=False."""
    from math_verify import parse

    errors = []

    def work():
        try:
            parse("\\boxed{1/2}")
        except ValueError as e:
            errors.append(str(e))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert len(errors) == 1 and "thread" in errors[0]


def test_grading_in_a_worker_thread():
    cases = EQUAL + DIFFERENT + [("5", "10^{10^{10^{10}}}"), ("5", "(x+1)^{1000}")]
    want = [True] * len(EQUAL) + [False] * (len(DIFFERENT) + 2)
    got, errors = [], []

    def work():
        try:
            t0 = time.perf_counter()
            got.extend(is_correct(p, t) for p, t in cases)
            got.append(canonical("0.5") == canonical("\\frac{1}{2}"))
            got.append(time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001 (any escape is the failure under test)
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive() and errors == []
    assert got[:-1] == want + [True]
    # unbounded expressions are refused up front, not evaluated without a timeout
    assert got[-1] < 10


def test_main_thread_timeout_is_not_correct(monkeypatch):
    monkeypatch.setattr(grading, "TIMEOUT_S", 1)
    t0 = time.perf_counter()
    assert not is_correct("5", "10^{10^{10^{10}}}")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("group", [
    ["1/2", "0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", "\\boxed{0.5}"],
    ["13", "13.0", "\\$13", "13 apples", "$13$", "x=13"],
    ["2\\sqrt{2}", "\\sqrt{8}"],
    ["1000", "1,000"],
])
def test_canonical_groups_equal_answers(group):
    forms = {canonical(a) for a in group}
    assert len(forms) == 1, forms


def test_canonical_separates_different_answers():
    answers = ["1/2", "1/3", "13", "14", "-13", "2\\sqrt{2}", "(1,2)", "\\{1,2\\}", "abc"]
    assert len({canonical(a) for a in answers}) == len(answers)
    assert canonical("") == ""
    assert canonical("13") == "13" and canonical("0.5") == "1/2"
    # unparseable and unbounded answers keep a textual normal form
    assert canonical(" \\frac{ .") == canonical("\\frac{") == "\\frac{"
    assert canonical("10^{10^{10^{10}}}") == "10^{10^{10^{10}}}"
