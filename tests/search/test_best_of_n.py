"""BestOfN against a plain-Python reference written from huggingface/search-and-learn's
best_of_n (aggregate step scores, then naive / weighted / majority selection)."""

from collections import Counter, defaultdict

import pytest

from ponder import _core
from tests.search.toy import Driver, ToyLM, verifier


def aggregate(scores, how):
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        p = 1.0
        for s in scores:
            p *= s
        return p
    return sum(scores) / len(scores)


def reference(lm, n, how, select, max_steps):
    """n independent solutions; each a chain of samples until an answer or max_steps."""
    sols = []
    for i in range(n):
        path, ordinal = (), i
        while True:
            step = lm.sample(path, ordinal)
            path = path + (step.label,)
            ordinal = 0
            if step.finished or len(path) >= max_steps:
                break
        scores = [verifier(path[:j + 1]) for j in range(len(path))]
        answer = path[-1][1:] if path[-1].startswith("=") else ""
        sols.append((path, aggregate(scores, how), answer))
    if select == "naive":
        best = max(range(n), key=lambda i: sols[i][1])
        return sols[best][2], sols[best][0]
    if select == "weighted":
        w = defaultdict(float)
        for _, s, a in sols:
            w[a] += s
        return max(w, key=lambda a: (w[a], -[x[2] for x in sols].index(a))), None
    c = Counter(a for _, _, a in sols)
    return max(c, key=lambda a: (c[a], -[x[2] for x in sols].index(a))), None


@pytest.mark.parametrize("how", ["last", "min", "prod", "mean"])
@pytest.mark.parametrize("select", ["naive", "weighted", "majority"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(how, select, seed):
    lm = ToyLM(seed)
    st = _core.BestOfNStrategy(8, how, select, max_steps=6)
    d = Driver(st, lm).run()
    ranking = st.ranking()
    assert len(ranking) == 8
    best = st.tree.node(ranking[0])
    want_answer, want_path = reference(lm, 8, how, select, 6)
    assert best.answer == want_answer
    if want_path is not None:
        assert d.labels[ranking[0]] == want_path
    # every expansion of a non-root node asked for exactly one child
    assert d.expansions[0] == (0, 8) and len(d.expansions) > 1
    assert all(k == 1 for _, k in d.expansions[1:])


def test_token_budget_stops_the_search():
    st = _core.BestOfNStrategy(16, "last", "naive", max_tokens=40, max_steps=20)
    Driver(st, ToyLM(5)).run()
    # the budget is checked before each round: at most one round past it
    assert st.tree.total_tokens < 40 + 16 * 6


def test_invalid_parameters():
    with pytest.raises(ValueError, match="n must"):
        _core.BestOfNStrategy(0)
    with pytest.raises(ValueError, match="aggregation"):
        _core.BestOfNStrategy(4, "median")
    with pytest.raises(ValueError, match="select"):
        _core.BestOfNStrategy(4, "last", "best")
    with pytest.raises(ValueError, match="max_steps"):
        _core.BestOfNStrategy(4, max_steps=0)
