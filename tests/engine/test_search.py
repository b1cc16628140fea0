"""Searches through the engine on SmolLM2: determinism under batching, abort, budgets,
results and the tree page."""

import json

import pytest

import ponder

Q1 = "What is 7 times 8?"
Q2 = "Sam has 5 apples and gets 8 more. How many apples does he have?"


def small(cls, **kw):
    base = dict(max_steps=3, max_step_tokens=12, seed=7)
    base.update(kw)
    return cls(**base)


def calls_verifier():
    seen = []

    def verifier(question, steps):
        seen.append((question, list(steps)))
        return [0.3 + 0.6 * (i % 2) + 0.01 * len(s) % 0.1 for i, s in enumerate(steps)]

    return verifier, seen


@pytest.fixture(scope="module")
def eng(smollm2_gguf):
    return ponder.Engine(smollm2_gguf, kv_blocks=512)


def _shape(res):
    return [(n["parent"], n["text"], round(n["score"], 9)) for n in json.loads(
        res.tree.to_json())["nodes"]]


STRATEGIES = [(ponder.BestOfN, dict(n=4)), (ponder.BeamSearch, dict(n=4, width=2)),
              (ponder.DVTS, dict(n=4, width=2)), (ponder.ParticleFilter, dict(n=4))]


@pytest.mark.parametrize("cls,kw", STRATEGIES, ids=[c.__name__ for c, _ in STRATEGIES])
def test_same_tree_alone_and_batched(eng, cls, kw):
    verifier, seen = calls_verifier()
    alone = eng.search(Q1, small(cls, **kw), prm=verifier)
    assert seen and all(q == Q1 and isinstance(s, list) for q, s in seen)
    before = eng.kv.stats()["used"]
    # The same search next to another search and a plain generation request.
    other = eng.add_request(Q2, small(ponder.BestOfN, n=3, seed=1), prm=verifier)
    gen = eng.add_request("Tell me a joke.", ponder.Sampling(max_tokens=20, seed=3))
    rid = eng.add_request(Q1, small(cls, **kw), prm=verifier)
    while eng.has_unfinished():
        eng.step()
    batched = eng.output(rid)
    assert alone.error is None and batched.error is None
    assert len(_shape(alone)) > 1  # the search grew a tree: equal shapes are not trivial
    assert _shape(batched) == _shape(alone)
    assert batched.answer == alone.answer
    eng.output(other), eng.output(gen)
    assert eng.kv.stats()["used"] == before == 0


def test_result_structure_and_page(eng, tmp_path):
    verifier, _ = calls_verifier()
    res = eng.search(Q1, small(ponder.BestOfN, n=3), prm=verifier)
    assert res.error is None and len(res.candidates) == 3  # best-of-n ranks all n
    assert res.best is res.candidates[0]
    for c in res.candidates:
        assert len(c.steps) == len(c.scores) >= 1
        assert all("\n\n" not in s for s in c.steps)  # steps end at the step delimiter
    for key in ("tokens_generated", "tokens_prefilled", "prefix_hit_tokens", "forward_passes",
                "score_calls", "peak_kv_blocks", "wall_ms"):
        assert key in res.stats
    assert res.stats["score_calls"] == 3  # best-of-n scores finished solutions only
    tree = json.loads(res.tree.to_json())
    assert tree["chosen"][-1] == res.best.node
    page = tmp_path / "tree.html"
    res.tree.to_html(str(page))
    text = page.read_text()
    assert "<html" in text and "http" not in text.replace("http-equiv", "")
    assert "chosen" in text


def test_prefill_and_prefix_hit_counts(smollm2_gguf):
    eng = ponder.Engine(smollm2_gguf, kv_blocks=256)
    verifier, _ = calls_verifier()
    prompt = eng.tokenizer.encode_chat([{"role": "user", "content": Q2}])
    first = eng.search(Q2, small(ponder.BestOfN, n=2), prm=verifier)
    # A fresh engine: the whole prompt but the token a step's first decode computes.
    assert first.stats["tokens_prefilled"] == len(prompt) - 1
    assert first.stats["prefix_hit_tokens"] == 0
    again = eng.search(Q2, small(ponder.BestOfN, n=2), prm=verifier)
    full = (len(prompt) - 1) // eng.block_size * eng.block_size  # whole blocks are cached
    assert again.stats["prefix_hit_tokens"] == full
    assert again.stats["tokens_prefilled"] == len(prompt) - 1 - full


def test_token_budget_holds(eng):
    res = eng.search(Q1, small(ponder.BeamSearch, n=4, width=2, max_tokens=30, max_steps=10))
    # checked before each round: at most one round (n steps) past the budget
    assert res.stats["tokens_generated"] <= 30 + 4 * 12


def test_abort_mid_search_returns_the_pool(eng):
    start = eng.kv.stats()
    rid = eng.add_request(Q2, small(ponder.ParticleFilter, n=4, max_steps=6))
    for _ in range(8):
        eng.step()
    assert eng.kv.stats()["used"] > 0
    eng.abort(rid)
    end = eng.kv.stats()
    assert end["used"] == start["used"] == 0 and end["free"] == end["num_blocks"]


def test_invalid_strategy_parameters(eng):
    with pytest.raises(ValueError, match="width"):
        ponder.BeamSearch(n=6, width=4)
    with pytest.raises(ValueError, match="n must"):
        ponder.BestOfN(n=0)
    with pytest.raises(ValueError, match="aggregation"):
        ponder.BestOfN(aggregation="median")
    with pytest.raises(ValueError, match="temperature"):
        ponder.ParticleFilter(temperature=0)
    with pytest.raises(ValueError, match="lookahead"):
        ponder.BeamSearch(lookahead=2)
    with pytest.raises(TypeError, match="prm"):
        eng.search(Q1, ponder.BestOfN(n=2), prm="not callable")
    with pytest.raises(TypeError, match="strategy"):
        eng.search(Q1, ponder.Sampling())


@pytest.mark.parametrize("spec", [ponder.AStar(k=2, budget=4, max_steps=3, max_step_tokens=12,
                                               seed=7),
                                  ponder.MCTS(simulations=4, k=2, max_steps=3, max_step_tokens=12,
                                              seed=7, dirichlet=0.3),
                                  ponder.ParticleGibbs(n=3, iterations=2, max_steps=3,
                                                       max_step_tokens=12, seed=7)],
                         ids=["astar", "mcts", "pgibbs"])
def test_tree_searches_run_and_free_everything(eng, spec):
    verifier, _ = calls_verifier()
    res = eng.search(Q1, spec, prm=verifier)
    assert res.stats["tokens_generated"] > 0 and len(json.loads(res.tree.to_json())["nodes"]) > 1
    again = eng.search(Q1, spec, prm=verifier)
    assert _shape(again) == _shape(res)
    assert eng.kv.stats()["used"] == 0
