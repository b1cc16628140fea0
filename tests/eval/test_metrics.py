"""Selections against the C++ strategies' own ranking, search-and-learn's selections by hand,
pass@k against a brute-force count, and budget subsampling (against C++ reruns)."""

import itertools
import math
import random

import pytest

from ponder import _core
from ponder.eval import metrics
from ponder.eval.metrics import aggregate, pass_at_k, pool_order, select, selections, subsample
from tests.search.toy import Driver, ToyLM

HOWS = ["last", "min", "prod", "mean"]
SELECTS = ["naive", "weighted", "majority"]


def cand(answer, scores, correct=False, tokens=10, sample=0):
    return {"answer": answer, "scores": scores, "correct": correct, "tokens": tokens,
            "sample": sample}


def test_aggregate():
    s = [0.5, 0.25, 0.75]
    assert aggregate(s, "last") == 0.75
    assert aggregate(s, "min") == 0.25
    assert aggregate(s, "prod") == 0.5 * 0.25 * 0.75
    assert aggregate(s, "mean") == 0.5
    assert [aggregate([], h) for h in HOWS] == [0.0] * 4
    with pytest.raises(ValueError, match="how"):
        aggregate(s, "median")


# --- select() against the C++ rank_solutions ------------------------------------------------
def _candidates(tree, nodes, sample_of):
    """Candidates of the given nodes in the record's order: by sample, then node id."""
    out = []
    for nid in sorted(nodes, key=lambda i: (sample_of[i], i)):
        n = tree.node(nid)
        tokens = sum(tree.node(p).num_tokens for p in tree.path(nid))
        out.append({"answer": n.answer, "scores": list(n.path_scores), "correct": False,
                    "tokens": tokens, "sample": sample_of[nid], "node": nid})
    return out


def _grow(st, step, max_steps):
    """Runs a C++ strategy on a synthetic policy: step(sample, depth, ordinal) gives
    (finished, score, answer, tokens); every child is scored. Returns the depth-1 ancestor's
    index among the root's children (the sample) of every node."""
    tree, sample_of = st.tree, {}
    ordinals: dict[int, int] = {}
    while plan := st.plan():
        children = []
        for node, k in plan:
            for _ in range(k):
                j = ordinals.get(node, 0)
                ordinals[node] = j + 1
                sample = j if node == 0 else sample_of[node]
                depth = tree.node(node).depth + 1
                finished, score, answer, tokens = step(sample, depth, j)
                cid = tree.add_child(node, tokens, -1.0, finished)
                sample_of[cid] = sample
                prefix = list(tree.node(node).path_scores) if node else []
                tree.set_path_scores(cid, prefix + [score])
                if finished or depth >= max_steps:
                    tree.set_answer(cid, answer)
                children.append(cid)
        st.count_score_calls(len(children))
        st.observe(children)
    return sample_of


def _policy(seed, levels):
    """A reproducible synthetic policy; scores from `levels` (few levels: many exact ties)."""
    def step(sample, depth, ordinal):
        r = random.Random(f"{seed}|{sample}|{depth}|{ordinal}")
        score = r.choice(levels) if levels else r.random()
        return r.random() < 0.35, score, r.choice(["1", "2", "3", "2.0"]), r.randint(1, 9)
    return step


TIES = [0.0, 0.25, 0.5, 1.0]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("sel", SELECTS)
@pytest.mark.parametrize("levels", [TIES, None], ids=["ties", "uniform"])
def test_select_matches_cpp_best_of_n(how, sel, levels):
    checked = 0
    for seed in range(40):
        n = 1 + seed % 12
        st = _core.BestOfNStrategy(n, how, sel, max_steps=5)
        sample_of = _grow(st, _policy(seed, levels), 5)
        finished = [i for i in range(1, len(st.tree)) if st.tree.node(i).finished]
        cands = _candidates(st.tree, finished, sample_of)
        assert len(cands) == n
        order = pool_order(cands, "bon")
        pick = select([cands[i] for i in order], how, sel)
        assert cands[order[pick]]["node"] == st.ranking()[0], seed
        checked += 1
    assert checked == 40


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("sel", SELECTS)
@pytest.mark.parametrize("levels", [TIES, None], ids=["ties", "uniform"])
def test_select_matches_cpp_dvts(how, sel, levels):
    for seed in range(30):
        width = [1, 2, 4][seed % 3]
        n = width * (1 + seed % 4)
        st = _core.DVTSStrategy(n, width, how, sel, max_steps=5)
        sample_of = _grow(st, _policy(seed, levels), 5)
        ranking = st.ranking()
        cands = _candidates(st.tree, ranking, sample_of)
        assert len(cands) == n
        assert pool_order(cands, "dvts") == list(range(n))
        pick = select(cands, how, sel)
        assert cands[pick]["node"] == ranking[0], seed


def test_ties_decide_by_pool_order():
    """A best-of-N tie goes to the lower node id: the shallower solution, not the lower
    sample; select() alone keeps the list's first."""
    cands = [cand("1", [1.0, 0.5], sample=0), cand("2", [0.5], sample=1)]
    assert select(cands, "last", "naive") == 0
    order = pool_order(cands, "bon")
    assert order == [1, 0] and order[select([cands[i] for i in order], "last", "naive")] == 1


@pytest.mark.parametrize("seed", range(4))
def test_select_matches_cpp_on_the_toy_policy(seed):
    lm = ToyLM(seed)
    for how, sel in itertools.product(HOWS, SELECTS):
        st = _core.BestOfNStrategy(8, how, sel, max_steps=6)
        Driver(st, lm).run()
        roots = st.tree.node(0).children
        sample_of = {i: roots.index(st.tree.path(i)[0]) for i in range(1, len(st.tree))}
        finished = [i for i in range(1, len(st.tree)) if st.tree.node(i).finished]
        cands = _candidates(st.tree, finished, sample_of)
        order = pool_order(cands, "bon")
        pick = select([cands[i] for i in order], how, sel)
        assert cands[order[pick]]["node"] == st.ranking()[0], (how, sel)


def test_select_by_hand():
    cands = [cand("1", [0.9]), cand("2", [0.5]), cand("2", [0.6]), cand("3", [0.9]),
             cand("1", [0.1])]
    assert select(cands, "last", "naive") == 0  # 0.9 tie: the first
    assert select(cands, "last", "weighted") == 2  # "2": 1.1 > "1": 1.0; best of "2"
    assert select(cands, "last", "majority") == 0  # "1" and "2" twice: "1" seen first
    assert select([], "last", "naive") is None
    with pytest.raises(ValueError, match="select"):
        select(cands, "last", "maj")
    with pytest.raises(ValueError, match="aggregation"):
        select(cands, "median", "naive")


# --- selections(): search-and-learn's rules -------------------------------------------------
def test_selections_by_hand():
    # truth 2. Groups by canonical form: {"2", "2.0"} (0, 2), {"1/2", "0.5"} (1, 3), {"7"} (4)
    cands = [
        cand("2", [0.9, 0.3], correct=True),
        cand("1/2", [0.4, 0.4]),
        cand("2.0", [0.2, 0.5], correct=True),
        cand("0.5", [0.5, 0.45]),
        cand("7", [0.95, 0.2]),
    ]
    # last:  0.3 0.4 0.5 0.45 0.2 -> naive "2.0" (ok); groups 0.8 / 0.85 / 0.2 -> "1/2"
    # min:   0.3 0.4 0.2 0.45 0.2 -> naive "0.5";      groups 0.5 / 0.85 / 0.2 -> "1/2"
    # prod:  .27 .16 .10 .225 .19 -> naive "2" (ok);   groups .37 / .385 / .19 -> "1/2"
    # maj: "2" and "1/2" both twice -> "2", seen first (ok)
    assert selections(cands) == {
        "naive@last": True, "naive@min": False, "naive@prod": True,
        "weighted@last": False, "weighted@min": False, "weighted@prod": False, "maj": True,
    }


def test_selections_ties_and_groups():
    # Every aggregate ties at 0.5: naive takes the first; weighted sums 1.0 ("3", "3.0") vs
    # 1.0 ("4", "\\frac{8}{2}") -> tie -> group seen first. Majority: 2 vs 2 -> first.
    first_wrong = [cand("3", [0.5]), cand("4", [0.5], correct=True), cand("3.0", [0.5]),
                   cand("\\frac{8}{2}", [0.5], correct=True)]
    assert set(selections(first_wrong).values()) == {False}
    # one more "4" gives the "4" group the weight and the majority; naive still the first
    more = first_wrong + [cand("4", [0.5], correct=True)]
    got = selections(more)
    assert [k for k, v in got.items() if v] == ["weighted@last", "weighted@min",
                                                 "weighted@prod", "maj"]
    assert selections([]) == dict.fromkeys(metrics.SELECTION_KEYS, False)
    # no scores: every aggregate and group sum is 0.0, so the first candidate and group win
    # naive and weighted; majority goes to the larger group
    got = selections([cand("5", [], correct=True), cand("6", []), cand("6", [])])
    assert got == {k: k != "maj" for k in metrics.SELECTION_KEYS}


# --- pass@k ---------------------------------------------------------------------------------
def _brute_pass_at_k(n, c, k):
    draws = list(itertools.combinations(range(n), k))  # samples 0..c-1 are the correct ones
    return sum(any(i < c for i in d) for d in draws) / len(draws)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 10) == 0.0 and pass_at_k(10, 1, 10) == 1.0
    assert pass_at_k(100, 10, 5) == pytest.approx(1 - math.comb(90, 5) / math.comb(100, 5))
    assert pass_at_k(4, 2, 0) == 0.0
    with pytest.raises(ValueError, match="k must"):
        pass_at_k(4, 2, 5)
    with pytest.raises(ValueError, match="c must"):
        pass_at_k(4, 5, 1)


# --- subsample ------------------------------------------------------------------------------
def _record(strategy, budget, cands, params):
    return {
        "key": f"p7|{strategy}|{budget}|3", "problem_id": "p7", "question": "q", "truth": "2",
        "strategy": strategy, "budget": budget, "seed": 3, "params": params,
        "verifier": "equations", "model": "toy", "config_hash": "h", "answer": "x",
        "correct": False, "solution": "text", "candidates": cands,
        "tokens_generated": sum(c["tokens"] for c in cands), "tokens_prefilled": 1001,
        "prm_tokens": 333, "score_calls": 16, "forward_passes": 7, "peak_kv_blocks": 9,
        "rounds": 6, "seconds": 1.5, "subsampled_from": None, "error": None,
    }


def test_subsample_best_of_n_fields():
    cands = [cand("1", [0.2], tokens=5, sample=0), cand("2", [0.4, 0.9], True, 7, 1),
             cand("2", [0.3], True, 11, 2), cand("3", [0.8], tokens=13, sample=3)]
    rec = _record("bon", 4, cands, {"n": 4, "aggregation": "last", "select": "naive",
                                    "max_steps": 40})
    before = repr(rec)
    out = subsample(rec, 2)
    assert repr(rec) == before  # the input is untouched
    assert out["candidates"] == cands[:2]
    assert (out["answer"], out["correct"], out["solution"]) == ("2", True, "")
    assert out["budget"] == 2 and out["subsampled_from"] == 4
    assert out["key"] == "p7|bon|2|3"
    assert out["params"] == {"n": 2, "aggregation": "last", "select": "naive",
                             "max_steps": 40}
    assert out["tokens_generated"] == 12
    assert (out["tokens_prefilled"], out["prm_tokens"], out["score_calls"],
            out["forward_passes"], out["peak_kv_blocks"], out["rounds"]) == (500, 166, 8, 4, 4, 3)
    assert all(type(out[k]) is int for k in ("tokens_prefilled", "prm_tokens", "rounds"))
    assert out["seconds"] == 0.75
    assert {k: v for k, v in out.items() if k not in (
        "candidates", "answer", "correct", "solution", "budget", "subsampled_from", "key",
        "params", "tokens_generated", "tokens_prefilled", "prm_tokens", "score_calls",
        "forward_passes", "peak_kv_blocks", "rounds", "seconds")} == {
        k: v for k, v in rec.items() if k not in out or k in (
            "problem_id", "question", "truth", "strategy", "seed", "verifier", "model",
            "config_hash", "error")}
    # a majority vote at budget 3 ("2" twice), naive at 1 (the only one), a sample that did
    # not finish (no sample 1) is not replaced by a later one
    maj = subsample(dict(rec, params=dict(rec["params"], select="majority")), 3)
    assert (maj["answer"], maj["correct"]) == ("2", True)
    assert subsample(rec, 1)["answer"] == "1"
    gap = _record("bon", 4, [cands[0], cands[2], cands[3]], rec["params"])
    assert [c["sample"] for c in subsample(gap, 2)["candidates"]] == [0]


def test_subsample_dvts_and_errors():
    cands = [cand(str(i % 3), [0.1 * i], i == 4, 3, (i // 2) * 2) for i in range(8)]
    rec = _record("dvts", 8, cands, {"n": 8, "width": 4, "aggregation": "last",
                                     "select": "weighted"})
    out = subsample(rec, 2)
    assert out["candidates"] == cands[:2] and out["params"]["width"] == 2
    assert out["params"]["n"] == 2 and out["answer"] == "1" and out["key"] == "p7|dvts|2|3"
    out = subsample(rec, 5)  # weights: "0" 0.3, "1" 0.5, "2" 0.2 -> "1" (candidate 4)
    assert (out["answer"], out["correct"], out["params"]["width"]) == ("1", True, 4)
    failed = dict(_record("bon", 8, [], {"n": 8}), error="boom", answer="")
    out = subsample(failed, 4)
    assert (out["answer"], out["correct"], out["candidates"], out["error"]) == (
        "", False, [], "boom")
    with pytest.raises(ValueError, match="budget must"):
        subsample(rec, 9)
    with pytest.raises(ValueError, match="strategy"):
        subsample(dict(rec, strategy="beam"), 2)


@pytest.mark.parametrize("sel", SELECTS)
@pytest.mark.parametrize("how", ["last", "min", "prod"])
def test_subsampled_best_of_n_equals_a_rerun(how, sel):
    """Best-of-16 subsampled to B picks what a best-of-B run of the same samples picks."""
    for seed in range(12):
        policy = _policy(seed, TIES)
        st = _core.BestOfNStrategy(16, how, sel, max_steps=5)
        sample_of = _grow(st, policy, 5)
        finished = [i for i in range(1, len(st.tree)) if st.tree.node(i).finished]
        rec = _record("bon", 16, _candidates(st.tree, finished, sample_of),
                      {"n": 16, "aggregation": how, "select": sel})
        for budget in (1, 2, 4, 8):
            small = _core.BestOfNStrategy(budget, how, sel, max_steps=5)
            _grow(small, policy, 5)
            best = small.tree.node(small.ranking()[0])
            out = subsample(rec, budget)
            assert out["answer"] == best.answer, (seed, budget)
            assert out["tokens_generated"] == small.tree.total_tokens
