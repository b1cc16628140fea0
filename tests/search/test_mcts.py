"""MCTS against a plain-Python reference written from openr (openreasoner/openr,
reason/guided_search/tree.py: Node.update_recursive, SearchTree._select_child / _ucb_score /
_expand_leaf_node / _add_exploration_noise; envs/MATH/env.py: priors = exp(mean token logprob)
normalized over the siblings), one simulation per generation round as documented in
csrc/core/search/mcts.h, and root Dirichlet noise drawn from Philox (tests/reference.py)."""

import math

import pytest

from ponder import _core
from tests.reference import ref_philox_uniform
from tests.search.toy import Driver, ToyLM, verifier

STREAM = 0x4D43545300000000


def ref_gamma(alpha, seed, seq_id):
    """Marsaglia & Tsang (2000), 'A simple method for generating gamma variables', with
    Box-Muller normals; alpha < 1 boosted as Gamma(alpha + 1) * U^(1/alpha)."""
    u = lambda j: ref_philox_uniform(seed, seq_id, j)  # noqa: E731
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    j = 1
    while True:
        z = math.sqrt(-2.0 * math.log(1.0 - u(j))) * math.cos(6.283185307179586 * u(j + 1))
        t = 1.0 + c * z
        if t > 0.0:
            v = t * t * t
            if math.log(1.0 - u(j + 2)) < 0.5 * z * z + d - d * v + d * math.log(v):
                g = d * v
                break
        j += 3
    if alpha < 1.0:
        g *= (1.0 - u(0)) ** (1.0 / alpha)
    return g


class Node:
    """openr's Node / LanguageNode, reduced to what the search reads."""

    def __init__(self, parent, prior_p, initial_value, path, terminated, id_):
        self._parent, self._children = parent, []  # openr: an insertion-ordered dict
        self._visit_count, self._value_sum = 0, 0.0
        self.prior_p, self._initial_value = prior_p, initial_value
        self.path, self.terminated, self.id = path, terminated, id_

    @property
    def value(self):
        if self._visit_count == 0:
            return self._initial_value
        return self._value_sum / self._visit_count

    def update_recursive(self, leaf_value):  # play_with_bot_mode: the same sign all the way up
        self._visit_count += 1
        self._value_sum += leaf_value
        if self._parent is not None:
            self._parent.update_recursive(leaf_value)


class RefMCTS:
    def __init__(self, lm, simulations, k, c_puct, dirichlet, seed, max_steps, max_tokens=0,
                 noise_weight=0.25, terminal_value="value", prior="mean"):
        self.lm, self.k, self.c, self.alpha, self.seed = lm, k, c_puct, dirichlet, seed
        self.max_steps, self.max_tokens, self.noise_weight = max_steps, max_tokens, noise_weight
        self.terminal_value, self.prior = terminal_value, prior
        self.nodes = [Node(None, 1.0, 0.0, (), False, 0)]
        self.expansions, self.tokens, self.sims = [], 0, 0
        while self.sims < simulations and not (max_tokens and self.tokens >= max_tokens):
            self._simulate()

    def _ucb_score(self, parent, child):
        pb_c = self.c * math.sqrt(parent._visit_count) / (child._visit_count + 1)
        return pb_c * child.prior_p + child.value

    def _select_child(self, node):
        best, best_score = None, -math.inf
        for child in node._children:
            score = self._ucb_score(node, child)
            if best is None or score > best_score:
                best, best_score = child, score
        return best

    def _expand_leaf_node(self, node):
        self.expansions.append(node.id)
        steps = [self.lm.sample(node.path, j) for j in range(self.k)]
        if self.prior == "mean":
            logps = [s.logprob / s.num_tokens if s.num_tokens else 0.0 for s in steps]
        else:  # deliberately wrong: the whole step's log-probability
            logps = [s.logprob for s in steps]
        top = max(logps)
        probs = [math.exp(lp - top) for lp in logps]
        total = sum(probs)
        for s, p in zip(steps, probs, strict=True):
            path = node.path + (s.label,)
            child = Node(node, p / total, verifier(path), path,
                         s.finished or len(path) >= self.max_steps, len(self.nodes))
            self.nodes.append(child)
            node._children.append(child)
            self.tokens += s.num_tokens

    def _add_exploration_noise(self, node):
        g = [ref_gamma(self.alpha, self.seed, STREAM + i) for i in range(len(node._children))]
        total = sum(g)
        noise = [x / total if total > 0 else 1.0 / len(g) for x in g]
        frac = self.noise_weight
        for child, n in zip(node._children, noise, strict=True):
            child.prior_p = child.prior_p * (1 - frac) + n * frac

    def _simulate(self):
        node = self.nodes[0]
        while node._children:
            node = self._select_child(node)
        if node.terminated:
            leaf_value = node.value if self.terminal_value == "value" else 1.0
        else:
            self._expand_leaf_node(node)
            if node.id == 0 and self.alpha > 0:
                self._add_exploration_noise(node)
            node = self._select_child(node)
            leaf_value = node._initial_value
        node.update_recursive(leaf_value)
        self.sims += 1

    def answer(self):
        node = self.nodes[0]
        while node._children and not (node.id and node.terminated):
            node = max(node._children, key=lambda c: c._visit_count)  # first of the maxima
        if node.id and node.terminated:
            return node.id
        # the most visited path ends unfinished: the other finished nodes, most visited first
        rest = [n for n in self.nodes if n.id and n.terminated]
        if not rest:
            return node.id
        return min(rest, key=lambda n: (-n._visit_count, -n.value, n.id)).id


def run(seed, sims, k, c_puct, dirichlet, noise_seed, max_steps, **kw):
    st = _core.MCTSStrategy(sims, k, c_puct, dirichlet, noise_seed, max_steps=max_steps, **kw)
    d = Driver(st, ToyLM(seed)).run()
    return st, d


def compare(st, d, ref):
    assert [n for n, _ in d.expansions] == ref.expansions  # selection order, leaf by leaf
    assert len(st.tree) == len(ref.nodes)
    for r in ref.nodes:
        n = st.tree.node(r.id)
        assert d.labels[r.id] == r.path
        assert n.visits == r._visit_count
        assert abs(n.value_sum - r._value_sum) <= 1e-12
        if r.id:
            assert abs(n.prior - r.prior_p) <= 1e-12
            assert n.finished == r.terminated


CASES = [(seed, k, c, alpha, ns) for seed in range(4) for k in (1, 2, 3)
         for c, alpha, ns in ((0.0, 0.0, 0), (1.25, 0.0, 0), (3.0, 0.3, 7), (1.25, 2.5, 1))]


@pytest.mark.parametrize("seed,k,c_puct,dirichlet,noise_seed", CASES)
@pytest.mark.parametrize("sims", [1, 6, 40])
def test_matches_reference(seed, k, c_puct, dirichlet, noise_seed, sims):
    st, d = run(seed, sims, k, c_puct, dirichlet, noise_seed, max_steps=6)
    ref = RefMCTS(ToyLM(seed), sims, k, c_puct, dirichlet, noise_seed, 6)
    compare(st, d, ref)
    assert st.simulations_done == sims == st.tree.node(0).visits
    assert st.ranking()[0] == ref.answer()
    assert d.expansions and all(c == k for _, c in d.expansions)


def test_gamma_draws_match_and_are_gamma_distributed():
    for alpha in (0.03, 0.3, 1.0, 2.5):
        draws = [_core.philox_gamma(alpha, 11, STREAM + i) for i in range(4000)]
        for i in range(0, 4000, 397):
            assert draws[i] == pytest.approx(ref_gamma(alpha, 11, STREAM + i), rel=1e-12)
        mean = sum(draws) / len(draws)
        var = sum((x - mean) ** 2 for x in draws) / len(draws)
        assert abs(mean - alpha) < 4 * math.sqrt(alpha / len(draws))  # Gamma(a,1): mean a
        assert abs(var - alpha) < 0.15 * alpha + 0.01                  # and variance a


def test_noise_is_deterministic_per_seed():
    a, _ = run(2, 10, 4, 1.25, 0.3, 5, max_steps=6)
    b, _ = run(2, 10, 4, 1.25, 0.3, 5, max_steps=6)
    c, _ = run(2, 10, 4, 1.25, 0.3, 6, max_steps=6)
    pa = [a.tree.node(i).prior for i in a.tree.node(0).children]
    assert pa == [b.tree.node(i).prior for i in b.tree.node(0).children]
    assert pa != [c.tree.node(i).prior for i in c.tree.node(0).children]
    assert abs(sum(pa) - 1.0) < 1e-12


def test_token_budget_stops_the_search():
    st, _ = run(1, 1000, 3, 1.25, 0.0, 0, max_steps=40, max_tokens=50)
    ref = RefMCTS(ToyLM(1), 1000, 3, 1.25, 0.0, 0, 40, max_tokens=50)
    assert st.simulations_done == ref.sims < 1000
    assert st.tree.total_tokens < 50 + 3 * 6
    st, _ = run(1, 1000, 3, 1.25, 0.0, 0, max_steps=40, max_score_calls=12)
    assert st.score_calls < 12 + 3


def test_ranking_lists_finished_solutions():
    st, d = run(0, 60, 3, 1.25, 0.0, 0, max_steps=5)
    r = st.ranking()
    assert r and all(st.tree.node(i).finished for i in r)
    assert sorted(r) == [i for i in range(1, len(st.tree)) if st.tree.node(i).finished]


def test_wrong_rules_in_reference_are_detected():
    """The comparison can fail: each deliberately wrong rule breaks equality somewhere."""
    wrong = [dict(noise_weight=0.5), dict(terminal_value="one"), dict(prior="sum")]
    for kw in wrong:
        broke = False
        for seed, k, c, alpha, ns in CASES:
            if k == 1 or (kw.get("noise_weight") and alpha == 0):
                continue
            st, d = run(seed, 40, k, c, alpha, ns, max_steps=6)
            ref = RefMCTS(ToyLM(seed), 40, k, c, alpha, ns, 6, **kw)
            try:
                compare(st, d, ref)
            except AssertionError:
                broke = True
                break
        assert broke, kw


def test_invalid_parameters():
    with pytest.raises(ValueError, match="simulations"):
        _core.MCTSStrategy(0, 2)
    with pytest.raises(ValueError, match="k must"):
        _core.MCTSStrategy(4, 0)
    with pytest.raises(ValueError, match="c_puct"):
        _core.MCTSStrategy(4, 2, c_puct=-1.0)
    with pytest.raises(ValueError, match="dirichlet"):
        _core.MCTSStrategy(4, 2, dirichlet=-0.1)
    with pytest.raises(ValueError, match="dirichlet"):
        _core.MCTSStrategy(4, 2, dirichlet=float("inf"))
    with pytest.raises(ValueError, match="max_score_calls"):
        _core.MCTSStrategy(4, 2, max_score_calls=-2)
    with pytest.raises(ValueError, match="alpha"):
        _core.philox_gamma(0.0, 0, 0)


def test_releases_each_node_once():
    from tests.search.test_astar import ReleaseDriver

    st = _core.MCTSStrategy(25, 3, max_steps=6)
    d = ReleaseDriver(st, ToyLM(1)).run()
    assert d.expansions and len(d.released) == len(set(d.released))
    for round_, (node, _) in enumerate(d.expansions):
        assert d.released_after[node] == round_ + 1  # expanded once: freed with its children
    assert sorted(d.released) == list(range(len(st.tree)))  # the rest when the search ends
