"""Process reward models: every format's incremental scores against its published reference
run by transformers over the whole text, on hand-made solutions and on every node of real
search trees; incremental and full scoring give the same searches; malformed PRMs and bad
calls raise clear errors; no KV block leaks."""

from __future__ import annotations

import json
import os

import pytest
import torch

import ponder
from ponder.prm import PrmScorer

from .tiny_prm import FORMATS, build, reference_scores

Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
SOLUTIONS = [
    ["Tom starts with 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The answer is 7."],
    ["Tom starts with 3 apples.", "He buys 4, so he has 3+4=8.", "The answer is 8."],
    ["3 + 4 = 7", "  Ответ: 7 яблок  "],  # spaces kept, non-ASCII
    ["Step 1: 3 + 4 -> 7 ки"],              # text that looks like tags
]
TOL = 2e-5


@pytest.fixture(scope="session")
def tiny_prms(smollm2_tokenizer, tmp_path_factory):
    """format -> (path, hf body model, head tensors, transformers tokenizer)."""
    import transformers as tf

    root = tmp_path_factory.mktemp("prms")
    out = {}
    for fmt in FORMATS:
        path = str(root / fmt)
        model, head = build(fmt, path, smollm2_tokenizer)
        out[fmt] = (path, model, head, tf.PreTrainedTokenizerFast.from_pretrained(path))
    return out


def scorer(tiny_prms, fmt, device="cpu", **kw):
    path = tiny_prms[fmt][0]
    kw.setdefault("kv_blocks", 256)
    return PrmScorer(path, None if fmt in ("qwen", "skywork") else fmt, torch.float32,
                     torch.device(device), **kw)


def reference(tiny_prms, fmt, question, steps):
    _, model, head, tok = tiny_prms[fmt]
    return reference_scores(fmt, model, head, tok, question, steps)


def close(a, b, tol=TOL, empty_ok=False):
    """Equal lengths, each pair within tol; two empty lists only with empty_ok (a node that
    was never scored), so an empty result cannot pass for a match."""
    return ((empty_ok or len(a) > 0) and len(a) == len(b)
            and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_scores_equal_reference(tiny_prms, fmt, device):
    sc = scorer(tiny_prms, fmt, device)
    got = sc.score(Q, SOLUTIONS)
    assert len(got) == len(SOLUTIONS)
    for steps, scores in zip(SOLUTIONS, got, strict=True):
        ref = reference(tiny_prms, fmt, Q, steps)
        if fmt == "math-shepherd" and any("ки" in s for s in steps):
            # The reference also scores a tag the step text itself contains; ponder scores
            # each step once, at the tag that ends it.
            assert len(ref) == 2 and len(scores) == 1
            ref = ref[1:]
        assert len(ref) == len(steps)  # the reference found one tag per step
        assert close(scores, ref), (steps, scores, ref)
    assert not sc.kv.sequence_ids()


@pytest.mark.parametrize("fmt", FORMATS)
def test_incremental_tree_equals_reference(tiny_prms, fmt, device):
    """A small tree scored node by node (each child forking its parent's PRM KV), siblings
    in one batch, against a full re-score of each node's path."""
    sc = scorer(tiny_prms, fmt, device)
    root_steps = SOLUTIONS[0][:1]
    (a,) = sc.score_paths([(None, Q, root_steps)])
    kids = sc.score_paths([(a, Q, root_steps + [s]) for s in
                           ["He buys 4 more, so 3 + 4 = 7.", "So 3 * 4 = 12.", "7"]])
    grand = sc.score_paths([(kids[0], Q, root_steps + ["He buys 4 more, so 3 + 4 = 7.",
                                                       "The answer is 7."]),
                            (kids[1], Q, root_steps + ["So 3 * 4 = 12.", "Answer: 12"])])
    assert len(kids) == 3 and len(grand) == 2
    for node, steps in [(a, root_steps)] + list(zip(kids, [
            root_steps + [s] for s in ["He buys 4 more, so 3 + 4 = 7.", "So 3 * 4 = 12.", "7"]],
            strict=True)) + list(zip(grand, [
                root_steps + ["He buys 4 more, so 3 + 4 = 7.", "The answer is 7."],
                root_steps + ["So 3 * 4 = 12.", "Answer: 12"]], strict=True)):
        assert len(node.scores) == len(steps)
        assert close(node.scores, reference(tiny_prms, fmt, Q, steps)), steps
    # Incremental: a child runs far fewer tokens than its whole scoring text.
    for node in kids + grand:
        assert 0 < node.tokens_run < len(node.ids) // 2
    for node in [a] + kids + grand:
        sc.release(node)
    assert not sc.kv.sequence_ids()


def test_full_mode_runs_whole_texts(tiny_prms):
    second = {}
    for mode in ("incremental", "full"):
        s = scorer(tiny_prms, "qwen", incremental=mode == "incremental")
        (a,) = s.score_paths([(None, Q, SOLUTIONS[0][:1])])
        (b,) = s.score_paths([(a, Q, SOLUTIONS[0][:2])])
        s.release(a)
        s.release(b)
        second[mode] = b
    inc, full = second["incremental"], second["full"]
    assert close(inc.scores, full.scores, 1e-6)
    assert full.tokens_run == len(full.ids)
    assert inc.tokens_run < len(inc.ids) // 3


def test_a_failed_pass_leaves_nothing_behind(tiny_prms, monkeypatch):
    """A forward pass that fails mid-call: no sequence or kept node of that call survives,
    and the blocks it had registered in the prefix cache are dropped, so the same text
    scored again gets correct scores (not the uncomputed KV)."""
    sc = scorer(tiny_prms, "qwen", max_batch_tokens=32)
    real, calls = sc.runner.hidden_states, []

    def flaky(work):
        calls.append(len(work))
        if len(calls) == 1:  # the question's blocks, before any scored row, were appended
            raise RuntimeError("device lost")
        return real(work)

    monkeypatch.setattr(sc.runner, "hidden_states", flaky)
    with pytest.raises(RuntimeError, match="device lost"):
        sc.score(Q, SOLUTIONS[:2])
    assert not sc.kv.sequence_ids() and sc.kv.stats()["used"] == 0
    monkeypatch.setattr(sc.runner, "hidden_states", real)
    got = sc.score(Q, SOLUTIONS[:2])
    assert len(got) == 2
    for sol, scores in zip(SOLUTIONS[:2], got, strict=True):
        assert close(scores, reference(tiny_prms, "qwen", Q, sol))


def test_small_pool_evicts_and_stays_exact(tiny_prms):
    """A pool that cannot keep every node's KV evicts the least recently used ones; the
    children then rebuild from the prefix cache, with the same scores."""
    sc = scorer(tiny_prms, "skywork", kv_blocks=12)
    ref = reference(tiny_prms, "skywork", Q, SOLUTIONS[0])
    nodes, scored = [None], []
    for k in range(1, 4):
        layer = sc.score_paths([(nodes[-1], Q, SOLUTIONS[0][:k])] +
                               [(None, Q, [f"filler {i} " * 12] * k) for i in range(2)])
        assert len(layer) == 3
        scored += layer
        nodes.append(layer[0])
        assert close(layer[0].scores, ref[:k])
    assert sc.stats["evicted"] > 0
    with pytest.raises(ValueError, match="context holds"):
        sc.score(Q, [["a very long step " * 200]])
    for n in scored:
        sc.release(n)
    assert not sc.kv.sequence_ids()


# --- engine ---------------------------------------------------------------------------------
STRATEGIES = [(ponder.BestOfN, dict(n=3)), (ponder.BeamSearch, dict(n=4, width=2)),
              (ponder.DVTS, dict(n=4, width=2)), (ponder.ParticleFilter, dict(n=3)),
              (ponder.ParticleGibbs, dict(n=2, iterations=2)), (ponder.AStar, dict(k=2, budget=3)),
              (ponder.MCTS, dict(simulations=3, k=2))]


def small(cls, **kw):
    return cls(max_steps=3, max_step_tokens=10, seed=3, **kw)


def check_tree(tiny_prms, fmt, res):
    """Every scored node's path scores equal the reference's re-score of its path."""
    nodes = json.loads(res.tree.to_json())["nodes"]
    by_id = {n["id"]: n for n in nodes}
    checked = 0
    for n in nodes:
        if not n["path_scores"]:
            continue
        path, at = [], n
        while at["parent"] >= 0:
            path.append(at["text"].strip())
            at = by_id[at["parent"]]
        steps = path[::-1]
        assert close(n["path_scores"], reference(tiny_prms, fmt, Q, steps)), steps
        checked += 1
    return checked


@pytest.fixture(scope="module")
def engines(tiny_policy, smollm2_hf, tiny_prms):
    cache = {}

    def get(fmt, incremental=True, policy=None):
        key = (fmt, incremental, policy)
        if key not in cache:
            cache[key] = ponder.Engine(policy or tiny_policy, prm=tiny_prms[fmt][0],
                                       prm_format=None if fmt in ("qwen", "skywork") else fmt,
                                       kv_blocks=256, prm_kv_blocks=256,
                                       prm_incremental=incremental)
        return cache[key]

    return get


@pytest.mark.parametrize("fmt,policy", [(f, "tiny") for f in FORMATS] + [("qwen", "smollm2")])
def test_search_tree_scores_equal_reference(engines, tiny_prms, smollm2_hf, fmt, policy):
    """Every node of a beam search tree (random text from the tiny policy; real steps from
    SmolLM2) against the reference; then the same search with whole-text re-scoring."""
    policy = smollm2_hf if policy == "smollm2" else None
    eng = engines(fmt, policy=policy)
    res = eng.search(Q, small(ponder.BeamSearch, n=4, width=2))
    assert check_tree(tiny_prms, fmt, res) >= 4
    nodes = json.loads(res.tree.to_json())["nodes"]
    assert res.stats["prm_tokens"] == sum(n["prm_tokens"] for n in nodes) > 0
    full = engines(fmt, incremental=False, policy=policy).search(
        Q, small(ponder.BeamSearch, n=4, width=2))
    # The same search with every text re-scored whole: same tree, same choice.
    a, b = json.loads(res.tree.to_json()), json.loads(full.tree.to_json())
    assert [n["text"] for n in a["nodes"]] == [n["text"] for n in b["nodes"]]
    assert all(close(x["path_scores"], y["path_scores"], 1e-5, empty_ok=True)
               for x, y in zip(a["nodes"], b["nodes"], strict=True))
    assert res.best.text == full.best.text and res.answer == full.answer
    assert res.stats["prm_tokens"] < full.stats["prm_tokens"]
    assert not eng.prm.kv.sequence_ids() and not eng.kv.sequence_ids()


@pytest.mark.parametrize("cls,kw", STRATEGIES, ids=[c.__name__ for c, _ in STRATEGIES])
def test_every_strategy_uses_the_prm(engines, tiny_prms, cls, kw):
    eng = engines("qwen")
    res = eng.search(Q, small(cls, **kw))
    assert check_tree(tiny_prms, "qwen", res) >= 1
    assert not eng.prm.kv.sequence_ids()


def test_searches_batched_with_a_callable_verifier(engines, tiny_prms):
    """Two PRM searches and one with its own verifier callable, stepped together."""
    eng = engines("qwen")
    alone = eng.search(Q, small(ponder.BeamSearch, n=4, width=2))
    ids = [eng.add_request(Q, small(ponder.BeamSearch, n=4, width=2)),
           eng.add_request("What is 2 + 2?", small(ponder.BestOfN, n=2)),
           eng.add_request(Q, small(ponder.BestOfN, n=2),
                           prm=lambda q, steps: [0.5] * len(steps))]
    while eng.has_unfinished():
        eng.step()
    results = [eng.output(i) for i in ids]
    assert len(results) == 3
    # Batched or alone, the same tree (scores equal up to float summation order).
    a, b = json.loads(results[0].tree.to_json()), json.loads(alone.tree.to_json())
    assert len(a["nodes"]) > 1
    assert [n["text"] for n in a["nodes"]] == [n["text"] for n in b["nodes"]]
    assert all(close(x["path_scores"], y["path_scores"], 1e-5, empty_ok=True)
               for x, y in zip(a["nodes"], b["nodes"], strict=True))
    assert results[2].candidates
    assert all(c.scores and c.scores == [0.5] * len(c.scores) for c in results[2].candidates)
    assert check_tree(tiny_prms, "qwen", results[0]) >= 4


def test_engine_score(engines, tiny_prms):
    eng = engines("rlhflow")
    one = eng.score(Q, SOLUTIONS[0])
    assert close(one, reference(tiny_prms, "rlhflow", Q, SOLUTIONS[0]))
    many = eng.score(Q, SOLUTIONS[:2])
    assert close(many[0], one) and len(many) == 2
    with pytest.raises(ValueError, match="steps is empty"):
        eng.score(Q, [])
    with pytest.raises(TypeError, match="steps"):
        eng.score(Q, "one string")
    with pytest.raises(ValueError, match="question"):
        eng.score("", ["x"])
    assert not eng.prm.kv.sequence_ids()


def test_self_verify_on_the_policy(tiny_policy):
    """prm="self": the policy's own weights, a KV pool of the PRM's own."""
    import transformers as tf

    eng = ponder.Engine(tiny_policy, prm="self", kv_blocks=64, prm_kv_blocks=64)
    assert eng.prm.runner.model is eng.runner.model
    got = eng.score(Q, SOLUTIONS[0])
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(tiny_policy)
    ref = reference_scores("self-verify", model, {}, tok, Q, SOLUTIONS[0])
    assert close(got, ref)
    res = eng.search(Q, small(ponder.DVTS, n=4, width=2))
    assert res.stats["prm_tokens"] > 0 and not eng.prm.kv.sequence_ids()


def test_engine_without_prm(tiny_policy):
    eng = ponder.Engine(tiny_policy, kv_blocks=64)
    with pytest.raises(ValueError, match="no process reward model"):
        eng.score(Q, ["x"])


# --- malformed PRMs -------------------------------------------------------------------------
def _edit(src, dst, config=None, drop=(), reshape=None, tokenizer=None):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    t = {k: v for k, v in load_file(path).items() if k not in drop}
    if reshape:
        t[reshape] = torch.zeros(3, t[reshape].shape[-1])
    save_file(t, path, metadata={"format": "pt"})
    if config:
        with open(os.path.join(dst, "config.json")) as f:
            cfg = json.load(f)
        cfg.update(config)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(cfg, f)
    if tokenizer:
        tokenizer(dst)
    return str(dst)


def _no_sep(d):
    from tokenizers import Tokenizer

    path = os.path.join(d, "tokenizer.json")
    spec = json.loads(Tokenizer.from_file(path).to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<extra_0>"]
    spec["model"]["vocab"].pop("<extra_0>", None)
    with open(path, "w") as f:
        json.dump(spec, f)


@pytest.mark.parametrize("case,match", [
    ("missing_head", "missing its qwen head tensor 'score.2.weight'"),
    ("wrong_shape", "'score.2.weight' has shape"),
    ("no_sep", "no step separator token '<extra_0>'"),
    ("unknown_arch", "cannot tell the PRM format"),
    ("bad_format", "prm_format must be one of"),
    ("skywork_head_missing", "missing its skywork head tensor 'v_head.summary.weight'"),
])
def test_malformed_prm(tiny_prms, tmp_path, case, match):
    src = tiny_prms["qwen"][0]
    fmt = None
    if case == "missing_head":
        path = _edit(src, tmp_path / "p", drop=("score.2.weight",))
    elif case == "wrong_shape":
        path = _edit(src, tmp_path / "p", reshape="score.2.weight")
    elif case == "no_sep":
        path = _edit(src, tmp_path / "p", tokenizer=_no_sep)
    elif case == "unknown_arch":
        path = _edit(src, tmp_path / "p", config={"architectures": ["Qwen2ForCausalLM"]})
    elif case == "bad_format":
        path, fmt = src, "orm"
    else:
        path, fmt = src, "skywork"
    with pytest.raises(ValueError, match=match):
        PrmScorer(path, fmt, torch.float32, torch.device("cpu"), kv_blocks=8)


def test_engine_prm_arguments(tiny_policy):
    with pytest.raises(TypeError, match="prm must be a path"):
        ponder.Engine(tiny_policy, prm=lambda q, s: [0.0], kv_blocks=16)
    with pytest.raises(ValueError, match="needs a PRM checkpoint"):
        ponder.Engine(tiny_policy, prm_format="qwen", kv_blocks=16)
    with pytest.raises(FileNotFoundError):
        ponder.Engine(tiny_policy, prm="/nonexistent/prm", kv_blocks=16)


def test_cli_search_with_prm(tiny_policy, tiny_prms, capsys, tmp_path):
    from ponder import cli

    page = tmp_path / "tree.html"
    assert cli.main(["search", tiny_policy, Q, "--strategy", "beam", "--n", "4", "--width", "2",
                     "--max-steps", "2", "--max-step-tokens", "6", "--prm", tiny_prms["qwen"][0],
                     "--html", str(page)]) == 0
    err = capsys.readouterr().err
    assert "'prm_tokens'" in err and page.is_file()


def test_prefix_cache_across_requests(tiny_prms):
    """A second request on the same question takes the question's blocks from the PRM's
    prefix cache: only its own text runs."""
    sc = scorer(tiny_prms, "qwen")
    sc.score(Q, [SOLUTIONS[0]])
    first = sc.stats["tokens_run"]
    (got,) = sc.score(Q, [SOLUTIONS[1]])
    assert len(got) == len(SOLUTIONS[1])
    assert got == pytest.approx(reference(tiny_prms, "qwen", Q, SOLUTIONS[1]), abs=TOL)
    second = sc.stats["tokens_run"] - first
    assert second <= first - 32


def test_a_failing_prm_search_does_not_stall_the_others(engines):
    """A question whose PRM text overflows the PRM's context fails alone: its search ends
    with the error, the search batched with it finishes, and no KV block leaks."""
    eng = engines("qwen")
    ok = eng.add_request(Q, small(ponder.BeamSearch, n=4, width=2))
    long_q = "count " * 960  # fits the policy (1024 positions), not the PRM text
    bad = eng.add_request(long_q, small(ponder.BeamSearch, n=2, width=2))
    while eng.has_unfinished():
        eng.step()
    failed = eng.output(bad)
    assert failed.error is not None and "PRM's context holds" in failed.error
    assert failed.best is None and failed.answer == ""
    assert eng.output(ok).best is not None
    with pytest.raises(ValueError, match="PRM's context holds"):
        eng.search(long_q, small(ponder.BeamSearch, n=2, width=2))
    assert not eng.prm.kv.sequence_ids() and not eng.kv.sequence_ids()
