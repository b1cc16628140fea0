"""A request's failure is its own: whatever goes wrong with one request (a parameter the
kernels reject, a verifier or answer_fn that raises or returns garbage, a forward pass that
fails) finishes it with finish_reason "error" and its message, frees its KV, and every other
request goes on; the engine never wedges."""

from __future__ import annotations

import pytest

import ponder
from ponder import kernels

Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
PROMPT = [5, 17, 33, 8, 91, 4, 12, 9]


def small(**kw):
    base = dict(n=2, max_steps=2, max_step_tokens=6, seed=3)
    base.update(kw)
    return ponder.BestOfN(**base)


def ok_verifier(question, steps):
    return [0.5] * len(steps)


@pytest.fixture(scope="module")
def eng(tiny_policy):
    return ponder.Engine(tiny_policy, kv_blocks=256)


def drain(eng):
    for _ in range(10_000):
        if not eng.has_unfinished():
            return
        eng.step()
    raise AssertionError("the engine did not finish its requests")


def clean(eng):
    assert not eng.has_unfinished()
    assert eng.kv.stats()["used"] == 0 and not eng.kv.sequence_ids()


def sampler_rejects_seed(monkeypatch, seed: int, message: str) -> None:
    """The sampling kernel raises for any batch holding a row of this seed, as it does for
    a parameter it cannot take."""
    real = kernels.sample

    def picky(logits, temperature, top_k, top_p, min_p, seeds, *rest):
        if bool((seeds == seed).any()):
            raise ValueError(message)
        return real(logits, temperature, top_k, top_p, min_p, seeds, *rest)

    monkeypatch.setattr(kernels, "sample", picky)


def test_sampling_changed_after_the_door_never_reaches_the_sampler(eng):
    sp = ponder.Sampling(max_tokens=6, seed=2)
    sp.temperature = float("inf")  # changed after Sampling's checks: refused at the door
    with pytest.raises(ValueError, match="temperature"):
        eng.add_request(PROMPT, sp)
    sp = ponder.Sampling(max_tokens=6, seed=2, temperature=0.0)
    rid = eng.add_request(PROMPT, sp)
    sp.temperature = float("inf")  # the request keeps its own checked copy
    drain(eng)
    out = eng.output(rid)
    assert out.error is None and len(out.outputs[0].token_ids) == 6
    assert out.outputs[0].token_ids == eng.generate(
        [PROMPT], ponder.Sampling(max_tokens=6, temperature=0.0))[0].outputs[0].token_ids
    clean(eng)


def test_a_row_the_sampler_rejects_fails_that_request_alone(eng, monkeypatch):
    want = eng.generate([PROMPT], ponder.Sampling(max_tokens=6, seed=1))[0].outputs[0]
    sampler_rejects_seed(monkeypatch, 2, "temperature holds a value outside [0, inf)")
    good = eng.add_request(PROMPT, ponder.Sampling(max_tokens=6, seed=1))
    bad = eng.add_request(PROMPT, ponder.Sampling(max_tokens=6, seed=2))
    drain(eng)
    out_bad, out_good = eng.output(bad), eng.output(good)
    assert out_bad.error and "temperature" in out_bad.error
    assert out_bad.outputs[0].finish_reason == "error"
    assert out_good.error is None and out_good.outputs[0].token_ids == want.token_ids
    clean(eng)


def _searches(eng, bad_kwargs):
    ok = eng.add_request(Q, small(), prm=ok_verifier)
    bad = eng.add_request(Q, small(seed=4), **bad_kwargs)
    drain(eng)
    return eng.output(ok), eng.output(bad)


def _raise(*_):
    raise RuntimeError("the verifier broke")


BAD_SEARCHES = [
    ("raises", dict(prm=_raise), "the verifier broke"),
    ("too few scores", dict(prm=lambda q, steps: [0.5]), "scores for"),
    ("not numbers", dict(prm=lambda q, steps: ["high"] * len(steps)), "numbers"),
    ("nan", dict(prm=lambda q, steps: [float("nan")] * len(steps)), "not finite"),
    ("none", dict(prm=lambda q, steps: None), "numbers"),
    ("answer_fn raises", dict(prm=ok_verifier, answer_fn=lambda t: 1 / 0), "division"),
    ("answer_fn int", dict(prm=ok_verifier, answer_fn=lambda t: 7), "answer_fn must return"),
]


@pytest.mark.parametrize("kw,message", [(k, m) for _, k, m in BAD_SEARCHES],
                         ids=[n for n, _, _ in BAD_SEARCHES])
def test_a_broken_verifier_or_answer_fn_fails_its_search_alone(eng, kw, message):
    ok, bad = _searches(eng, kw)
    assert bad.error and message in bad.error
    assert bad.best is None and bad.answer == "" and bad.candidates == []
    assert ok.error is None and len(ok.candidates) == 2
    clean(eng)
    with pytest.raises(Exception, match=message):
        eng.search(Q, small(seed=5), **kw)
    clean(eng)


def test_answer_fn_none_means_no_answer(eng):
    res = eng.search(Q, small(), prm=ok_verifier, answer_fn=lambda text: None)
    assert res.error is None and len(res.candidates) == 2
    assert all(c.answer == "" for c in res.candidates)


@pytest.fixture
def tiny_llama(tmp_path):
    from tests.models.tiny import make_model, save

    return save(make_model("llama"), tmp_path / "llama")


def test_a_failed_forward_fails_its_batch_and_the_engine_serves_on(tiny_llama, monkeypatch):
    """One request per batch (max_num_seqs=1): a forward that raises fails the requests in
    its batch; generate() lets the others finish and raises one RequestError with every
    output; blocks the failed pass registered in the prefix cache are dropped, so the same
    prompt later gets correct KV."""
    eng = ponder.Engine(tiny_llama, kv_blocks=64, max_num_seqs=1)
    poison = list(range(40, 80))  # 40 tokens: two full blocks enter the prefix cache
    sp = ponder.Sampling(max_tokens=5, temperature=0.0, ignore_eos=True)
    want = ponder.Engine(tiny_llama, kv_blocks=64).generate([poison], sp)[0].outputs[0]
    real = eng.runner.execute

    def execute(work):
        if any(w.token_ids[:3] == poison[:3] for w in work):
            raise RuntimeError("kernel failure")
        return real(work)

    monkeypatch.setattr(eng.runner, "execute", execute)
    with pytest.raises(ponder.RequestError) as info:
        eng.generate([PROMPT, poison, PROMPT[:4]], sp)
    err = info.value
    assert err.failed == [1] and "kernel failure" in err.errors[0]
    assert len(err.outputs) == 3
    assert err.outputs[1].error and err.outputs[1].outputs[0].finish_reason == "error"
    assert [len(o.outputs[0].token_ids) for o in (err.outputs[0], err.outputs[2])] == [5, 5]
    clean(eng)
    monkeypatch.setattr(eng.runner, "execute", real)
    again = eng.generate([poison], sp)[0].outputs[0]
    assert again.token_ids == want.token_ids
    clean(eng)


def test_streamed_events_end_every_failed_completion(tiny_llama, monkeypatch):
    eng = ponder.Engine(tiny_llama, kv_blocks=64)
    sampler_rejects_seed(monkeypatch, 7, "top_p holds a value outside (0, 1]")
    rid = eng.add_request(PROMPT, ponder.Sampling(max_tokens=4, n=3, seed=7))
    good = eng.add_request(PROMPT, ponder.Sampling(max_tokens=4, seed=1, ignore_eos=True))
    events = []
    while eng.has_unfinished():
        events += eng.step()
    ends = {(e.request_id, e.index): e.finish_reason for e in events if e.finished}
    assert ends == {(rid, 0): "error", (rid, 1): "error", (rid, 2): "error",
                    (good, 0): "length"}
    assert eng.output(rid).error and eng.output(good).error is None
    clean(eng)


def test_an_error_while_processing_a_token_fails_that_request_alone(tiny_llama, monkeypatch):
    """Output processing (stop strings, text) that raises for one request's token ends that
    request; the others in the batch still get theirs and go on."""
    eng = ponder.Engine(tiny_llama, kv_blocks=64)
    real = eng.processor.append

    def append(seq, *args):
        if seq.req.seed == 666 and seq.num_generated == 2:
            raise ValueError("cannot read this token")
        return real(seq, *args)

    monkeypatch.setattr(eng.processor, "append", append)
    ids = [eng.add_request(PROMPT, ponder.Sampling(max_tokens=6, seed=s, ignore_eos=True))
           for s in (1, 666, 2)]
    drain(eng)
    outs = [eng.output(i) for i in ids]
    assert "cannot read this token" in outs[1].error
    assert [len(o.outputs[0].token_ids) for o in outs] == [6, 2, 6]
    assert outs[0].error is None and outs[2].error is None
    clean(eng)
