"""AStar against a plain-Python A*-decoding reference (arXiv 2505.13672: an open set of partial
solutions ordered by f = g + h with h = 1 - the verifier's score of the latest step; pop the
lowest, sample k next steps, score and push them; stop at the first complete solution popped).
g = depth_cost * depth, ties by node id, as documented in csrc/core/search/astar.h."""

import heapq

import pytest

from ponder import _core
from tests.search.toy import Driver, ToyLM, verifier


def reference(lm, k, budget, depth_cost, max_steps, max_tokens=0, tie_newest=False):
    """Returns (pops, solution, ranking, labels) with node ids numbered in creation order."""
    labels, depth, f, finished = {0: ()}, {0: 0}, {}, {}
    open_heap, pops, tokens, solution = [], [], 0, None

    def key(node):
        return (f[node], -node if tie_newest else node)

    def expand(node):
        nonlocal tokens
        pops.append(node)
        for j in range(k):
            step = lm.sample(labels[node], j)
            c = len(labels)
            labels[c] = labels[node] + (step.label,)
            depth[c] = depth[node] + 1
            tokens += step.num_tokens
            finished[c] = step.finished or depth[c] >= max_steps
            f[c] = depth_cost * depth[c] + (1.0 - verifier(labels[c]))
            heapq.heappush(open_heap, (key(c), c))

    expand(0)
    while open_heap:
        _, top = open_heap[0]
        if finished[top]:
            solution = heapq.heappop(open_heap)[1]
            break
        if len(pops) >= budget or (max_tokens and tokens >= max_tokens):
            break
        expand(heapq.heappop(open_heap)[1])
    ranking = sorted((c for c in finished if finished[c]), key=lambda c: (f[c], c))
    if not ranking and open_heap:
        ranking = [open_heap[0][1]]
    return pops, solution, ranking, labels


def run(seed, k, budget, depth_cost, max_steps, **kw):
    st = _core.AStarStrategy(k, budget, depth_cost, max_steps=max_steps, **kw)
    d = Driver(st, ToyLM(seed)).run()
    return st, d


CASES = [(seed, k, budget, dc) for seed in range(5) for k in (1, 2, 3)
         for budget in (1, 4, 12, 60) for dc in (0.0, 0.07)]


@pytest.mark.parametrize("seed,k,budget,depth_cost", CASES)
def test_matches_reference(seed, k, budget, depth_cost):
    st, d = run(seed, k, budget, depth_cost, max_steps=7)
    pops, solution, ranking, labels = reference(ToyLM(seed), k, budget, depth_cost, 7)
    assert [n for n, _ in d.expansions] == pops           # pop order, node by node
    assert d.expansions and all(c == k for _, c in d.expansions)
    assert len(st.tree) == len(labels)
    for i in range(1, len(labels)):
        assert d.labels[i] == labels[i]
        assert st.f(i) == pytest.approx(
            depth_cost * len(labels[i]) + 1.0 - verifier(labels[i]), abs=1e-12)
    assert st.solution == (-1 if solution is None else solution)
    assert st.ranking() == ranking
    assert st.expansions == len(pops) <= budget
    assert st.done and st.plan() == []


def test_stops_at_first_solution_popped():
    found = 0
    for seed in range(8):
        st, d = run(seed, 3, 200, 0.0, max_steps=6)
        if st.solution >= 0:
            found += 1
            best = st.tree.node(st.solution)
            assert best.finished and st.ranking()[0] == st.solution
            # nothing left in the search is better than the popped solution
            for i in range(1, len(st.tree)):
                if i not in {n for n, _ in d.expansions}:
                    assert st.f(i) >= st.f(st.solution)
    assert found == 8  # a large budget always reaches an answer with max_steps=6


def test_budget_exhausted_returns_best_found():
    st, d = run(3, 2, 2, 0.0, max_steps=30)
    assert st.expansions == 2 and st.solution == -1
    r = st.ranking()
    assert len(r) >= 1
    fin = [i for i in range(1, len(st.tree)) if st.tree.node(i).finished]
    if fin:
        assert r[0] == min(fin, key=lambda i: (st.f(i), i))
    else:  # the best partial
        assert len(r) == 1 and not st.tree.node(r[0]).finished


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_and_score_budgets(seed):
    st, _ = run(seed, 3, 10_000, 0.0, max_steps=40, max_tokens=30)
    pops, *_ = reference(ToyLM(seed), 3, 10_000, 0.0, 40, max_tokens=30)
    assert st.expansions == len(pops)
    assert st.tree.total_tokens < 30 + 3 * 6  # checked before each round: one round past at most
    st, _ = run(seed, 3, 10_000, 0.0, max_steps=40, max_score_calls=10)
    assert st.score_calls < 10 + 3


class ReleaseDriver(Driver):
    """Driver that collects take_released() after every round."""

    def run(self, max_rounds: int = 10_000):
        self.released, self.released_after = [], {}
        st, observe = self.st, self.st.observe

        class Spy:
            def __getattr__(_, name):
                return getattr(st, name)

            def observe(_, children):
                observe(children)
                got = st.take_released()
                for n in got:
                    self.released_after[n] = len(self.expansions)
                self.released.extend(got)

        self.st = Spy()
        super().run(max_rounds)
        self.released.extend(st.take_released())
        self.st = st
        return self


def test_releases_each_expanded_node_once():
    st = _core.AStarStrategy(3, 15, max_steps=6)
    d = ReleaseDriver(st, ToyLM(4)).run()
    assert d.expansions and len(d.released) == len(set(d.released))
    for round_, (node, _) in enumerate(d.expansions):
        assert d.released_after[node] == round_ + 1  # freed as soon as its children exist
    for i in range(len(st.tree)):
        # every node is freed by the end: expanded, terminal, or left in the open set
        assert i in d.released


def test_wrong_rule_in_reference_is_detected():
    """The comparison can fail: a reference breaking ties by newest node differs somewhere."""
    differs = 0
    for seed, k, budget, dc in CASES:
        if dc == 0.0 or k == 1:
            continue
        st, d = run(seed, k, budget, dc, max_steps=7)
        pops, *_ = reference(ToyLM(seed), k, budget, dc, 7, tie_newest=True)
        differs += [n for n, _ in d.expansions] != pops
    assert differs > 0
    # and a reference dropping g (g = 0 while depth_cost > 0) differs somewhere too
    differs = 0
    for seed, k, budget, dc in CASES:
        if dc > 0.0:
            st, d = run(seed, k, budget, dc, max_steps=7)
            pops, *_ = reference(ToyLM(seed), k, budget, 0.0, 7)
            differs += [n for n, _ in d.expansions] != pops
    assert differs > 0


def test_invalid_parameters():
    with pytest.raises(ValueError, match="k must"):
        _core.AStarStrategy(0, 10)
    with pytest.raises(ValueError, match="budget must"):
        _core.AStarStrategy(2, 0)
    with pytest.raises(ValueError, match="depth_cost"):
        _core.AStarStrategy(2, 10, -0.5)
    with pytest.raises(ValueError, match="depth_cost"):
        _core.AStarStrategy(2, 10, float("nan"))
    with pytest.raises(ValueError, match="max_tokens"):
        _core.AStarStrategy(2, 10, max_tokens=-1)
    with pytest.raises(ValueError, match="max_steps"):
        _core.AStarStrategy(2, 10, max_steps=0)
