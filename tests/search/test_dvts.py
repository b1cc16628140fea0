"""DVTS against a plain-Python reference written from huggingface/search-and-learn's `_dvts`
(src/sal/search/diverse_verifier_tree_search.py), driven by the toy policy and verifier.
A beam's `addr` (child ordinals along its path) names a tree node and keys the toy's samples."""

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest

from ponder import _core
from tests.search.test_step_beam import addr, aggregate, select_answer
from tests.search.toy import Driver, ToyLM, verifier


@dataclass
class Beam:
    addr: tuple = ()
    labels: tuple = ()
    next: list = field(default_factory=list)  # (addr, labels, answer, finished) per child
    all_scores: list = field(default_factory=list)
    pruned: bool = False


@dataclass
class Out:
    addr: tuple
    all_scores: list
    answer: str


def reference(lm, n, width, max_steps, how, select="naive", max_tokens=0, mutation=None):
    beams = [Beam() for _ in range(n // width)]
    expansions, tokens = [], 0
    for _ in range(max_steps):  # num_iterations; the last one generates to EOS
        if max_tokens and tokens >= max_tokens:
            break
        gen_beams = [b for b in beams if not b.pruned]
        if not gen_beams:
            break
        ordinal = defaultdict(int)
        for b in gen_beams:
            if ordinal[b.addr] == 0:
                expansions.append([b.addr, 0])
            expansions[-1][1] += width
            b.next = []
            for _ in range(width):
                j = ordinal[b.addr]
                ordinal[b.addr] += 1
                step = lm.sample(b.labels, j)
                tokens += step.num_tokens
                b.next.append((b.addr + (j,), b.labels + (step.label,), step.answer,
                               step.finished))
        for b in gen_beams:
            b.all_scores = [[verifier(lab[:i + 1]) for i in range(len(lab))]
                            for _, lab, _, _ in b.next]
            agg = [aggregate(s, how) for s in b.all_scores]
            best = int(np.argmin(agg)) if mutation == "argmin" else int(np.argmax(agg))
            b.addr, b.labels = b.next[best][0], b.next[best][1]
            if b.next[best][3]:  # EOS or a boxed answer
                b.pruned = True
    out = [Out(b.next[i][0], b.all_scores[i], b.next[i][2])
           for b in beams if b.next for i in range(width)]
    return dict(expansions=[tuple(e) for e in expansions], pool=[o.addr for o in out],
                answer=select_answer(out, how, select) if out else None)


def run_cpp(lm, n, width, max_steps, how, select="naive", max_tokens=0):
    st = _core.DVTSStrategy(n, width, aggregation=how, select=select, max_tokens=max_tokens,
                            max_steps=max_steps)
    d = Driver(st, lm).run()
    t = st.tree
    ranking = st.ranking()
    return st, d, dict(expansions=[(addr(t, v), k) for v, k in d.expansions],
                       pool=sorted(addr(t, i) for i in ranking),
                       answer=t.node(ranking[0]).answer if ranking else None)


def norm(ref):
    ref["pool"] = sorted(ref["pool"])
    return ref


@pytest.mark.parametrize("n,width", [(8, 2), (8, 4), (12, 3), (4, 1), (6, 6)])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_reference(n, width, seed):
    lm = ToyLM(seed, end_bias=0.08)
    st, _, got = run_cpp(lm, n, width, 7, "last")
    assert got == norm(reference(lm, n, width, 7, "last"))
    assert st.done and not st.plan()


@pytest.mark.parametrize("how", ["last", "min", "prod", "mean"])
@pytest.mark.parametrize("select", ["naive", "weighted", "majority"])
@pytest.mark.parametrize("seed", [4, 5])
def test_aggregation_and_selection(how, select, seed):
    lm = ToyLM(seed, end_bias=0.1)
    _, _, got = run_cpp(lm, 12, 3, 6, how, select)
    assert got == norm(reference(lm, 12, 3, 6, how, select))


def test_naive_best_is_a_finished_solution():
    for seed in range(6):
        st, _, _ = run_cpp(ToyLM(seed, end_bias=0.08), 8, 2, 7, "last")
        assert st.tree.node(st.ranking()[0]).finished


def test_releases_every_node_once():
    st = _core.DVTSStrategy(12, 3, max_steps=7)
    d = Driver(st, ToyLM(2, end_bias=0.08))
    released = []
    orig = st.observe

    class Wrapped:  # take_released after every round, as the engine does
        def __getattr__(self, k):
            return getattr(st, k)

        def observe(self, children):
            orig(children)
            released.extend(st.take_released())

    d.st = Wrapped()
    d.run()
    released += st.take_released()
    expanded = {v for v, _ in d.expansions}
    assert expanded and st.done
    assert len(released) == len(set(released)) == len(st.tree)
    assert expanded <= set(released)


@pytest.mark.parametrize("max_tokens", [20, 60, 150])
def test_token_budget(max_tokens):
    lm = ToyLM(2, end_bias=0.05)
    st, _, got = run_cpp(lm, 8, 2, 12, "last", max_tokens=max_tokens)
    assert st.tree.total_tokens < max_tokens + 8 * 6
    assert got == norm(reference(lm, 8, 2, 12, "last", max_tokens=max_tokens))


def test_a_wrong_rule_is_caught():
    mismatches = 0
    for seed in range(6):
        lm = ToyLM(seed, end_bias=0.08)
        _, _, got = run_cpp(lm, 8, 2, 7, "last")
        mismatches += got != norm(reference(lm, 8, 2, 7, "last", mutation="argmin"))
    assert mismatches > 0


def test_invalid_parameters():
    with pytest.raises(ValueError, match="n must"):
        _core.DVTSStrategy(0, 1)
    with pytest.raises(ValueError, match="width must"):
        _core.DVTSStrategy(4, 0)
    with pytest.raises(ValueError, match="multiple of width"):
        _core.DVTSStrategy(12, 5)
    with pytest.raises(ValueError, match="select"):
        _core.DVTSStrategy(8, 2, select="best")
    with pytest.raises(ValueError, match="max_score_calls"):
        _core.DVTSStrategy(8, 2, max_score_calls=-1)
