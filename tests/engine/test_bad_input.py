"""Bad input is caught at the door: a catalogue of wrong arguments to Engine(...), Sampling,
every search spec, generate, add_request, search, score, beam_search and abort. Each case
must raise the stated exception with a message that names the argument, queue nothing, and
leave the engine serving the next request with every KV block returned."""

import sys

import numpy as np
import pytest
import torch

import ponder
from ponder.search.specs import SearchSpec
from tests.models.tiny import make_model, save

NAN, INF = float("nan"), float("inf")
GOOD = ponder.Sampling(max_tokens=2, temperature=0.0, ignore_eos=True)
Q = "What is 7 times 8?"
V, T, TV = ValueError, TypeError, (TypeError, ValueError)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A random Llama with a 160-token vocabulary and no tokenizer."""
    return save(make_model("llama"), tmp_path_factory.mktemp("llama"))


@pytest.fixture
def tiny(tiny_path):
    # A fresh engine per case (a few ms), so that a case that leaves a request behind fails
    # alone rather than every case after it.
    return ponder.Engine(tiny_path, kv_blocks=32)  # 32 blocks x 16 = 512 = its positions


@pytest.fixture(scope="module")
def smol_cache():
    return {}


@pytest.fixture
def smol(smollm2_gguf, smol_cache):
    """SmolLM2 (a tokenizer and a chat template) with itself as the PRM, for str prompts,
    searches and score(): loaded once (seconds). A failed case that left requests queued is
    run out after it, or the engine is loaded again, so that the next case starts clean."""
    if "eng" not in smol_cache:
        smol_cache["eng"] = ponder.Engine(smollm2_gguf, kv_blocks=128, prm="self",
                                          prm_kv_blocks=32)
    eng = smol_cache["eng"]
    yield eng
    try:
        for _ in range(200):
            if not eng.has_unfinished():
                break
            eng.step()
        clean = not eng.has_unfinished() and eng.kv.stats()["used"] == 0
    except Exception:
        clean = False
    if not clean:
        del smol_cache["eng"]


def assert_serves(eng):
    assert not eng.has_unfinished(), "the bad request left something queued"
    out = eng.generate([[5, 17, 33]], GOOD)[0].outputs[0]
    assert len(out.token_ids) == 2 and out.finish_reason == "length"
    assert eng.kv.stats()["used"] == 0


def check(eng, exc, match, call):
    with pytest.raises(exc, match=match):
        call(eng)
    assert_serves(eng)


def kw_id(kw: dict) -> str:
    return ",".join(f"{k}={v!r}" for k, v in kw.items())


def cases(rows):
    """pytest.params (exc, match, call) from rows (id, exc, match, call)."""
    return [pytest.param(exc, match, call, id=name) for name, exc, match, call in rows]


# --- Sampling: everything that needs no model, at construction --------------------------
SAMPLING = [
    (dict(max_tokens=0), V), (dict(max_tokens=-3), V), (dict(max_tokens=1.5), T),
    (dict(max_tokens=True), T), (dict(max_tokens="8"), T),
    (dict(temperature=-0.1), V), (dict(temperature=INF), V), (dict(temperature=NAN), V),
    (dict(temperature="hot"), T), (dict(temperature=None), T), (dict(temperature=True), T),
    (dict(top_p=0), V), (dict(top_p=1.5), V), (dict(top_p=NAN), V), (dict(top_p="1"), T),
    (dict(top_k=-2), V), (dict(top_k=2**31), V), (dict(top_k=1.0), T), (dict(top_k=False), T),
    (dict(min_p=-0.1), V), (dict(min_p=1.5), V), (dict(min_p=INF), V),
    (dict(n=0), V), (dict(n=2.0), T), (dict(n=True), T),
    (dict(stop=[""]), V), (dict(stop=5), T), (dict(stop=["a", 5]), T), (dict(stop=b"x"), T),
    (dict(stop_token_ids=[-1]), V), (dict(stop_token_ids=[2**31]), V),
    (dict(stop_token_ids=[1.5]), T), (dict(stop_token_ids=[True]), T),
    (dict(stop_token_ids=7), T), (dict(stop_token_ids="12"), T),
    (dict(seed=-1), V), (dict(seed=2**63), V), (dict(seed=1.0), T), (dict(seed="7"), T),
    (dict(logprobs=-1), V), (dict(logprobs=2**31), V), (dict(logprobs=True), T),
    (dict(logprobs=2.0), T),
    (dict(ignore_eos=1), T), (dict(ignore_eos="no"), T), (dict(ignore_eos=None), T),
]


@pytest.mark.parametrize("kw,exc", [pytest.param(kw, exc, id=kw_id(kw))
                                    for kw, exc in SAMPLING])
def test_sampling(tiny, kw, exc):
    check(tiny, exc, next(iter(kw)), lambda e: e.generate([[5, 6]], ponder.Sampling(**kw)))


# --- search specs: every field, every strategy -------------------------------------------
COMMON = [
    (dict(max_steps=0), V), (dict(max_steps=2.0), T), (dict(max_steps=2**31), V),
    (dict(max_tokens=-1), V), (dict(max_tokens=None), T),
    (dict(max_score_calls=-1), V), (dict(max_score_calls=1.5), T),
    (dict(step_stop=[]), V), (dict(step_stop=[""]), V), (dict(step_stop=None), T),
    (dict(step_stop=[1]), T),
    (dict(max_step_tokens=0), V), (dict(max_step_tokens="256"), T),
    (dict(policy_temperature=0), V), (dict(policy_temperature=INF), V),
    (dict(policy_temperature="1"), T),
    (dict(top_p=0), V), (dict(top_p=2), V), (dict(top_p=NAN), V),
    (dict(seed=-1), V), (dict(seed=2**63), V), (dict(seed="7"), T), (dict(seed=True), T),
]
SPECS = [(ponder.BestOfN, kw, exc, None) for kw, exc in COMMON] + [
    (ponder.BestOfN, dict(n=0), V, None), (ponder.BestOfN, dict(n=True), T, None),
    (ponder.BestOfN, dict(aggregation="median"), V, None),
    (ponder.BestOfN, dict(aggregation=None), T, None),
    (ponder.BestOfN, dict(select="best"), V, None),
    (ponder.ParticleFilter, dict(n=0), V, None),
    (ponder.ParticleFilter, dict(temperature=0), V, None),
    (ponder.ParticleFilter, dict(temperature=NAN), V, None),
    (ponder.ParticleFilter, dict(aggregation="median"), V, None),
    (ponder.ParticleFilter, dict(seed=-5), V, None),
    (ponder.ParticleGibbs, dict(iterations=0), V, None),
    (ponder.ParticleGibbs, dict(iterations=1.0), T, None),
    (ponder.ParticleGibbs, dict(temperature=INF), V, None),
    (ponder.ParticleGibbs, dict(aggregation="x"), V, None),
    (ponder.ParticleGibbs, dict(n=4, num_ref_particles=4), V, "num_ref_particles"),
    (ponder.ParticleGibbs, dict(num_ref_particles=-1), V, None),
    (ponder.ParticleGibbs, dict(num_ref_particles=1.0), T, None),
    (ponder.BeamSearch, dict(width=0), V, None),
    (ponder.BeamSearch, dict(n=6, width=4), V, "width"),
    (ponder.BeamSearch, dict(lookahead=2), V, None),
    (ponder.BeamSearch, dict(lookahead="0"), T, None),
    (ponder.BeamSearch, dict(filter_duplicates="yes"), T, None),
    (ponder.BeamSearch, dict(aggregation="x"), V, None),
    (ponder.BeamSearch, dict(select="x"), V, None),
    (ponder.DVTS, dict(n=16, width=3), V, "width"),
    (ponder.DVTS, dict(aggregation="x"), V, None),
    (ponder.DVTS, dict(select=3), T, None),
    (ponder.AStar, dict(k=0), V, None), (ponder.AStar, dict(budget=0), V, None),
    (ponder.AStar, dict(budget=1.5), T, None), (ponder.AStar, dict(depth_cost=-1), V, None),
    (ponder.AStar, dict(depth_cost=NAN), V, None),
    (ponder.MCTS, dict(simulations=0), V, None), (ponder.MCTS, dict(k=0), V, None),
    (ponder.MCTS, dict(c_puct=-0.5), V, None), (ponder.MCTS, dict(c_puct=INF), V, None),
    (ponder.MCTS, dict(dirichlet=-0.1), V, None), (ponder.MCTS, dict(dirichlet="x"), T, None),
    (SearchSpec, {}, T, "BestOfN"),
]


@pytest.mark.parametrize("cls,kw,exc,match", [
    pytest.param(cls, kw, exc, match, id=f"{cls.__name__}({kw_id(kw)})")
    for cls, kw, exc, match in SPECS])
def test_spec(tiny, cls, kw, exc, match):
    check(tiny, exc, match or next(iter(kw)), lambda e: e.search(Q, cls(**kw)))


# --- Engine(...): raised before any weights load -----------------------------------------
ENGINE = [
    (dict(block_size=0), V), (dict(block_size=257), V), (dict(block_size=16.0), T),
    (dict(block_size=True), T),
    (dict(kv_blocks=0), V), (dict(kv_blocks=1.5), T), (dict(prm_kv_blocks=0), V),
    (dict(seed=-1), V), (dict(seed=2**63), V), (dict(seed="0"), T), (dict(seed=None), T),
    (dict(dtype="int8"), V), (dict(dtype=torch.int8), V), (dict(dtype=32), T),
    (dict(device="tpu"), V), (dict(device="meta"), V), (dict(device=0), T),
    ((dict(device="cuda:99") if ponder.cuda_available() and torch.cuda.is_available()
      else dict(device="cuda")), V),
    (dict(max_num_seqs=0), V), (dict(max_num_batched_tokens=0), V),
    (dict(max_num_batched_tokens=2.5), T),
    (dict(prm=3), T), (dict(prm_format="nope"), V), (dict(prm_format=1), T),
    (dict(prm_format="qwen"), V),  # a format that needs a PRM checkpoint, with none
    (dict(enable_prefix_cache="yes"), T), (dict(prm_incremental=1), T),
    (dict(model=None), T), (dict(model=3), T),
]


@pytest.fixture
def no_weights(monkeypatch):
    """Fails the test if any checkpoint is opened: every ponder module's load_checkpoint."""
    def load_checkpoint(*args, **kwargs):
        pytest.fail("weights were loaded before the arguments were checked")

    for name, mod in list(sys.modules.items()):
        if name.startswith("ponder") and hasattr(mod, "load_checkpoint"):
            monkeypatch.setattr(mod, "load_checkpoint", load_checkpoint)


@pytest.mark.parametrize("kw,exc,match", [
    pytest.param(kw, exc, next(iter(kw)), id=kw_id(kw)) for kw, exc in ENGINE] + [
    pytest.param(dict(prm=lambda q, s: [0.0] * len(s)), T, r"(?s)prm.*search\(",
                 id="prm=<verifier function>")])
def test_engine_args(tiny_path, no_weights, kw, exc, match):
    with pytest.raises(exc, match=match):
        ponder.Engine(**(dict(model=tiny_path, kv_blocks=8) | kw))


# --- generate / add_request ----------------------------------------------------------------
GENERATE = [
    ("empty-third-of-three", V, r"(?s)prompt.*\b2\b",
     lambda e: e.generate([[5], [6], []], GOOD)),
    ("empty", V, "prompt", lambda e: e.add_request([], GOOD)),
    ("id-outside-vocab", V, "prompt", lambda e: e.generate([[5], [5, 160]], GOOD)),
    ("negative-id", V, "prompt", lambda e: e.add_request([5, -1], GOOD)),
    ("str-id", T, "prompt", lambda e: e.add_request([5, "a"], GOOD)),
    ("float-id", T, "prompt", lambda e: e.add_request([5, 1.5], GOOD)),
    ("int", T, "prompt", lambda e: e.add_request(5, GOOD)),
    ("None", T, "prompt", lambda e: e.add_request(None, GOOD)),
    ("str-without-tokenizer", V, "token ids", lambda e: e.add_request("hello", GOOD)),
    ("never-fits", V, "context", lambda e: e.add_request([5] * e.max_context, GOOD)),
    ("never-fits-third", V, "context",
     lambda e: e.generate([[5], [6], [7] * e.max_context], GOOD)),
    ("sampling-dict", T, "sampling", lambda e: e.add_request([5], {"max_tokens": 3})),
    ("sampling-str", T, "sampling", lambda e: e.add_request([5], "greedy")),
    ("top_k>vocab", V, "top_k", lambda e: e.add_request([5], ponder.Sampling(top_k=161))),
    ("n>kv blocks", V, r"n \(33\)", lambda e: e.add_request([5], ponder.Sampling(n=33))),
    ("logprobs>vocab", V, "logprobs",
     lambda e: e.generate([[5]], ponder.Sampling(max_tokens=2, logprobs=161))),
    ("stop_token_ids-outside-vocab", V, "stop_token_ids",
     lambda e: e.add_request([5], ponder.Sampling(stop_token_ids=[3, 160]))),
    ("stop-without-tokenizer", V, "stop",
     lambda e: e.add_request([5], ponder.Sampling(stop=["x"]))),
    ("prm-for-a-generation", T, "prm", lambda e: e.add_request([5], GOOD, prm=lambda q, s: s)),
    ("answer_fn-for-a-generation", T, "answer_fn",
     lambda e: e.add_request([5], GOOD, answer_fn=str)),
    ("system_prompt-int", T, "system_prompt", lambda e: e.add_request([5], GOOD, system_prompt=3)),
    ("chat-str", T, "chat", lambda e: e.add_request([5], GOOD, chat="yes")),
    ("prompts-empty-list", T, "prompts", lambda e: e.generate([], GOOD)),
]
GENERATE_STR = [
    ("str-empty-third-of-three", V, r"(?s)prompt.*\b2\b",
     lambda e: e.generate(["hello", "world", ""], GOOD)),
    ("str-empty", V, "prompt", lambda e: e.add_request("", GOOD)),
    ("str-never-fits", V, "context", lambda e: e.add_request("word " * 3000, GOOD)),
    ("stop_token_ids-outside-vocab", V, "stop_token_ids",
     lambda e: e.add_request("hi", ponder.Sampling(stop_token_ids=[10**6]))),
]


@pytest.mark.parametrize("exc,match,call", cases(GENERATE))
def test_generate(tiny, exc, match, call):
    check(tiny, exc, match, call)


@pytest.mark.parametrize("exc,match,call", cases(GENERATE_STR))
def test_generate_str(smol, exc, match, call):
    check(smol, exc, match, call)


# --- search -------------------------------------------------------------------------------
def _search(question=Q, strategy=None, **kw):
    # A one-token search: a case whose error is not raised yet costs milliseconds.
    spec = ponder.BestOfN(n=1, max_steps=1, max_step_tokens=1) if strategy is None else strategy
    return lambda e: e.search(question, spec, **kw)


SEARCH = [
    ("strategy-str", T, "strategy", _search(strategy="beam")),
    ("strategy-Sampling", T, "strategy", _search(strategy=ponder.Sampling())),
    ("strategy-class", T, "strategy", _search(strategy=ponder.BestOfN)),
    ("prm-str", T, "prm", _search(prm="not callable")),
    ("answer_fn-str", T, "answer_fn", _search(answer_fn="x")),
    ("question-empty", V, "question", _search("")),
    ("question-None", TV, "question", _search(None)),
    ("question-ids", TV, "question", _search([5, 6])),
    ("question-never-fits", V, "context", _search("word " * 3000)),
    ("chat-str", T, "chat", _search(chat="yes")),
    ("add_request-prm-int", T, "prm",
     lambda e: e.add_request(Q, ponder.BestOfN(n=1, max_steps=1), prm=5)),
]


@pytest.mark.parametrize("exc,match,call", cases(SEARCH))
def test_search(smol, exc, match, call):
    check(smol, exc, match, call)


# --- score --------------------------------------------------------------------------------
SCORE = [
    ("question-int", TV, "question", lambda e: e.score(5, ["a step"])),
    ("question-empty", V, "question", lambda e: e.score("", ["a step"])),
    ("steps-str", T, "steps", lambda e: e.score(Q, "a step")),
    ("steps-ints", T, "steps", lambda e: e.score(Q, [1, 2])),
    ("steps-None", T, "steps", lambda e: e.score(Q, None)),
    ("steps-mixed", T, "steps", lambda e: e.score(Q, [["a"], "b"])),
]


def test_score_without_prm(tiny):
    check(tiny, V, "prm", lambda e: e.score(Q, ["a step"]))


@pytest.mark.parametrize("exc,match,call", cases(SCORE))
def test_score(smol, exc, match, call):
    check(smol, exc, match, call)


# --- beam_search --------------------------------------------------------------------------
BEAM = [
    (dict(width=0), V), (dict(width=1.5), T), (dict(width=True), T),
    (dict(max_tokens=0), V), (dict(max_tokens="4"), T),
    (dict(num_return=3), V), (dict(num_return=0), V),
    (dict(early_stopping="sometimes"), V),
    (dict(min_tokens=-1), V), (dict(min_tokens=1.5), T),
    (dict(length_penalty=NAN), V), (dict(length_penalty=INF), V), (dict(length_penalty="1"), T),
    (dict(prompt=[]), V), (dict(prompt=[5, 160]), V), (dict(prompt=5), T),
]


@pytest.mark.parametrize("kw,exc", [pytest.param(kw, exc, id=kw_id(kw)) for kw, exc in BEAM])
def test_beam_search(tiny, kw, exc):
    args = dict(prompt=[5, 6], width=2, max_tokens=4) | kw
    check(tiny, exc, next(iter(kw)), lambda e: e.beam_search(**args))


def test_beam_search_never_fits(tiny):
    check(tiny, V, "context",
          lambda e: e.beam_search([5] * e.max_context, width=2, max_tokens=4))


# --- abort --------------------------------------------------------------------------------
ABORT = [
    ("unknown", V, "request_id", lambda e: e.abort(10**6)),
    ("str", T, "request_id", lambda e: e.abort("0")),
    ("float", T, "request_id", lambda e: e.abort(0.0)),
    ("None", T, "request_id", lambda e: e.abort(None)),
]


@pytest.mark.parametrize("exc,match,call", cases(ABORT))
def test_abort(tiny, exc, match, call):
    check(tiny, exc, match, call)


# --- the edges that must still be accepted ------------------------------------------------
def test_accepted_edges(tiny):
    sp = ponder.Sampling(max_tokens=np.int64(3), temperature=1, top_p=1, top_k=-1, min_p=1,
                         stop="x", stop_token_ids=(np.int32(2),), seed=2**63 - 1, logprobs=0,
                         ignore_eos=np.bool_(True))
    assert (sp.max_tokens, sp.stop, sp.stop_token_ids, sp.ignore_eos) == (3, ["x"], [2], True)
    assert type(sp.max_tokens) is int and type(sp.temperature) is float
    assert ponder.Sampling(top_k=0, temperature=0, seed=0).greedy
    specs = [ponder.BestOfN(n=1, seed=0, step_stop="\n", max_tokens=0, max_score_calls=0),
             ponder.ParticleGibbs(n=4, num_ref_particles=3, aggregation="prod"),
             ponder.ParticleFilter(n=2, aggregation="mean", seed=2**63 - 1),
             ponder.BeamSearch(n=4, width=4, filter_duplicates=False, select="majority"),
             ponder.DVTS(n=4, width=2, aggregation="min", select="weighted"),
             ponder.AStar(k=1, budget=1, depth_cost=0), ponder.MCTS(c_puct=0, dirichlet=0.3)]
    for spec in specs:
        assert spec.build() is not None
    assert specs[0].step_stop == ["\n"]
    out = tiny.generate([[5, 6]], ponder.Sampling(max_tokens=3, top_k=160, logprobs=160,
                                                   stop_token_ids=[159], seed=1))
    assert 1 <= len(out[0].outputs[0].token_ids) <= 3
    assert_serves(tiny)
