"""BeamSearch against a plain-Python reference written from huggingface/search-and-learn's
`_beam_search` (src/sal/search/beam_search.py), driven by the toy policy and verifier.

The reference keeps search-and-learn's own data layout (a list of Beam records that are
deep-copied to refill n candidates) and only adds what the toy needs: a beam's `addr`, the
child ordinals along its path, which names a tree node and keys the toy's samples. A toy step's
text is its (label, num_tokens); the toy gives equal log-probabilities to equal texts, which is
what the C++ duplicate key (parent, num_tokens, logprob_sum) relies on.
"""

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest

from ponder import _core
from tests.search.toy import Driver, ToyLM, verifier


def aggregate(scores, how):
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        return float(np.prod(scores))
    return sum(scores) / len(scores)


@dataclass
class Beam:
    addr: tuple = ()
    labels: tuple = ()
    current_text: tuple = ()  # ((label, num_tokens), ...)
    all_scores: list = field(default_factory=list)
    answer: str = ""
    pruned: bool = False
    completed: bool = False


def select_answer(pool, how, select):
    """search-and-learn's naive / weighted / majority prediction over the returned beams."""
    scores = [aggregate(b.all_scores, how) for b in pool]
    answers = [b.answer for b in pool]
    if select == "naive":
        return answers[int(np.argmax(scores))]
    groups = defaultdict(float)
    for a, s in zip(answers, scores, strict=True):
        groups[a] += s if select == "weighted" else 1
    return max(groups, key=groups.get)


def reference(lm, n, width, max_steps, how, select="naive", filter_duplicates=True,
              max_tokens=0, mutation=None):
    active = [Beam() for _ in range(n)]
    completed, expansions, dropped = [], [], set()
    tokens = 0
    for _ in range(max_steps):  # num_iterations
        if max_tokens and tokens >= max_tokens:
            break
        active = [b for b in active if not b.pruned]
        if len(active) != n:
            repeats = n // len(active) + 1
            active = [copy.deepcopy(b) for b in (active * repeats)[:n]]
        ordinal = defaultdict(int)
        for b in active:
            j = ordinal[b.addr]
            ordinal[b.addr] += 1
            if j == 0:
                expansions.append([b.addr, 0])
            next(e for e in expansions[::-1] if e[0] == b.addr)[1] += 1
            step = lm.sample(b.labels, j)
            tokens += step.num_tokens
            b.addr, b.labels = b.addr + (j,), b.labels + (step.label,)
            b.current_text = b.current_text + ((step.label, step.num_tokens),)
            b.answer = step.answer
            if step.finished or len(b.labels) >= max_steps:  # EOS, or the last iteration
                b.completed = True
                completed.append(b)
        for b in active:
            b.all_scores = [verifier(b.labels[:i + 1]) for i in range(len(b.labels))]
        agg_scores = [aggregate(b.all_scores, how) for b in active if not b.completed]
        active = [b for b in active if not b.completed]
        if not active:
            break
        if filter_duplicates and mutation != "no_dedup":
            unique = {}
            for i, b in enumerate(active):
                if b.current_text not in unique:
                    unique[b.current_text] = i
            dropped |= {b.addr for i, b in enumerate(active) if i not in unique.values()}
            active = [active[i] for i in unique.values()]
            agg_scores = [agg_scores[i] for i in unique.values()]
        top = np.argsort(np.array(agg_scores), kind="stable")[-(n // width):]
        for idx, b in enumerate(active):
            if idx not in top:
                b.pruned = True
                dropped.add(b.addr)
        if mutation == "score_order":  # wrong: kept beams in score order, not candidate order
            active = [active[i] for i in top[::-1]]
    pool = sorted(completed, key=lambda b: aggregate(b.all_scores, how), reverse=True)[:n]
    if pool and len(pool) != n:
        pool = (pool * (n // len(pool) + 1))[:n]
    answer = select_answer(pool, how, select) if pool else None
    distinct = list(dict.fromkeys(b.addr for b in pool))
    return dict(expansions=[tuple(e) for e in expansions], dropped=dropped,
                completed=[b.addr for b in completed], pool=distinct, answer=answer)


def addr(tree, node):
    return tuple(tree.node(tree.node(c).parent).children.index(c) for c in tree.path(node))


def run_cpp(lm, n, width, max_steps, how, select="naive", filter_duplicates=True, max_tokens=0):
    st = _core.BeamSearchStrategy(n, width, filter_duplicates=filter_duplicates,
                                  aggregation=how, select=select, max_tokens=max_tokens,
                                  max_steps=max_steps)
    d = Driver(st, lm).run()
    t = st.tree
    ranking = st.ranking()
    completed = [i for i in range(1, len(t)) if t.node(i).finished]
    return st, d, dict(
        expansions=[(addr(t, v), k) for v, k in d.expansions],
        dropped={addr(t, i) for i in range(1, len(t)) if t.node(i).pruned},
        completed=[addr(t, i) for i in completed],
        pool=[addr(t, i) for i in ranking] if select == "naive" else
        sorted(addr(t, i) for i in ranking),
        answer=t.node(ranking[0]).answer if ranking else None)


def normalize(ref, select):
    if select != "naive":
        ref["pool"] = sorted(ref["pool"])
    # completion order within one iteration is candidate order in the reference and node-id
    # order in the tree; the pool carries the order that matters (sorting is stable)
    ref["completed"] = sorted(ref["completed"])
    return ref


CONFIGS = [(8, 2), (8, 4), (12, 3), (4, 1), (6, 6)]


@pytest.mark.parametrize("n,width", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("filter_duplicates", [True, False])
def test_matches_reference(n, width, seed, filter_duplicates):
    lm = ToyLM(seed, end_bias=0.08)
    st, d, got = run_cpp(lm, n, width, 7, "last", filter_duplicates=filter_duplicates)
    want = reference(lm, n, width, 7, "last", filter_duplicates=filter_duplicates)
    got["completed"] = sorted(got["completed"])
    assert got == normalize(want, "naive")
    assert st.done and not st.plan()


@pytest.mark.parametrize("how", ["last", "min", "prod", "mean"])
@pytest.mark.parametrize("select", ["naive", "weighted", "majority"])
@pytest.mark.parametrize("seed", [4, 5])
def test_aggregation_and_selection(how, select, seed):
    lm = ToyLM(seed, end_bias=0.1)
    _, _, got = run_cpp(lm, 8, 2, 6, how, select)
    want = normalize(reference(lm, 8, 2, 6, how, select), select)
    got["completed"] = sorted(got["completed"])
    assert got == want


@pytest.mark.parametrize("select", ["naive", "weighted", "majority"])
def test_fewer_completed_than_n_are_repeated(select):
    # Only a budget can end the search with fewer than n completed beams (every iteration
    # has n candidates and the last one completes them all); the pool is then padded by
    # repetition, so a repeated solution votes once per copy.
    padded = 0
    for seed in range(8):
        lm = ToyLM(seed, end_bias=0.05)
        want = reference(lm, 8, 2, 12, "last", select, max_tokens=150)
        _, _, got = run_cpp(lm, 8, 2, 12, "last", select, max_tokens=150)
        got["completed"] = sorted(got["completed"])
        assert got == normalize(want, select)
        padded += 0 < len(want["completed"]) < 8
    assert padded > 0


def test_releases_every_node_once_and_never_expands_a_released_one():
    st = _core.BeamSearchStrategy(8, 2, max_steps=7)
    released = []

    class Engine:  # takes the released nodes after every round, as the engine does
        def __getattr__(self, k):
            return getattr(st, k)

        def plan(self):
            plan = st.plan()
            assert not {v for v, _ in plan} & set(released)
            return plan

        def observe(self, children):
            st.observe(children)
            released.extend(st.take_released())

    d = Driver(Engine(), ToyLM(1, end_bias=0.08)).run()
    released += st.take_released()
    assert d.expansions and st.done
    assert len(released) == len(set(released)) == len(st.tree)  # every node, once


@pytest.mark.parametrize("max_tokens", [20, 60, 150])
def test_token_budget(max_tokens):
    lm = ToyLM(2, end_bias=0.05)
    st, d, got = run_cpp(lm, 8, 2, 12, "last", max_tokens=max_tokens)
    assert st.tree.total_tokens < max_tokens + 8 * 6  # checked before each round
    want = normalize(reference(lm, 8, 2, 12, "last", max_tokens=max_tokens), "naive")
    got["completed"] = sorted(got["completed"])
    assert got == want


def test_score_call_budget():
    st = _core.BeamSearchStrategy(8, 4, max_score_calls=20, max_steps=12)
    Driver(st, ToyLM(3, end_bias=0.02)).run()
    assert st.score_calls == 24  # 8 per round, stopped before the fourth


@pytest.mark.parametrize("mutation", ["score_order", "no_dedup"])
def test_a_wrong_rule_is_caught(mutation):
    mismatches = 0
    for seed in range(8):
        lm = ToyLM(seed, end_bias=0.08)
        _, _, got = run_cpp(lm, 12, 3, 7, "last")
        got["completed"] = sorted(got["completed"])
        want = normalize(reference(lm, 12, 3, 7, "last", mutation=mutation), "naive")
        mismatches += got != want
    assert mismatches > 0


def test_invalid_parameters():
    with pytest.raises(ValueError, match="n must"):
        _core.BeamSearchStrategy(0, 1)
    with pytest.raises(ValueError, match="width must"):
        _core.BeamSearchStrategy(4, 0)
    with pytest.raises(ValueError, match="multiple of width"):
        _core.BeamSearchStrategy(8, 3)
    with pytest.raises(ValueError, match="lookahead"):
        _core.BeamSearchStrategy(8, 2, lookahead=1)
    with pytest.raises(ValueError, match="aggregation"):
        _core.BeamSearchStrategy(8, 2, aggregation="median")
    with pytest.raises(ValueError, match="select"):
        _core.BeamSearchStrategy(8, 2, select="best")
    with pytest.raises(ValueError, match="max_steps"):
        _core.BeamSearchStrategy(8, 2, max_steps=0)
    with pytest.raises(ValueError, match="max_tokens"):
        _core.BeamSearchStrategy(8, 2, max_tokens=-1)
