"""A server with a PRM: /v1/score and a PRM-verified search equal the in-process Engine's."""

from __future__ import annotations

import json

import openai
import pytest

import ponder
from tests.serve.conftest import KV_BLOCKS, metrics
from tests.serve.httpclient import httpx

QUESTION = "2+2?"


@pytest.fixture(scope="module")
def prm_engine(tiny_policy, tiny_prm):
    return ponder.Engine(tiny_policy, kv_blocks=KV_BLOCKS, prm=tiny_prm, prm_kv_blocks=4)


def test_score_gives_the_engines_per_step_scores(prm_server, prm_engine):
    steps = [["Two plus two.", "It is 4."], ["It is 5."]]
    want = prm_engine.score(QUESTION, steps)
    for body, expect in (({"steps": steps}, want), ({"steps": steps[0]}, want[:1])):
        resp = httpx.post(f"{prm_server.url}/v1/score", timeout=60,
                          json={"model": "tiny", "question": QUESTION, **body})
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["object"] == "list" and out["model"] == "tiny"
        assert [d["index"] for d in out["data"]] == list(range(len(expect)))
        assert all(d["object"] == "score" for d in out["data"])
        got = [d["score"] for d in out["data"]]
        assert [len(g) for g in got] == [len(e) for e in expect]
        for g, e in zip(got, expect, strict=True):
            assert g == pytest.approx(e, abs=1e-5)


def test_score_refuses_what_the_engine_refuses(prm_server):
    resp = httpx.post(f"{prm_server.url}/v1/score", json={"question": QUESTION, "steps": []},
                      timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "steps"
    resp = httpx.post(f"{prm_server.url}/v1/score", json={"model": "other", "question": "q",
                                                          "steps": ["a"]}, timeout=30)
    assert resp.status_code == 404


def test_a_prm_verified_search_equals_engine_search(prm_server, prm_engine, tiny_policy):
    fields = dict(n=2, width=2, max_steps=2, max_step_tokens=4)
    want = prm_engine.search(QUESTION, ponder.BeamSearch(**fields, seed=8), chat=False)
    client = openai.OpenAI(base_url=f"{prm_server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):   # the served name is "tiny"
        client.completions.create(model=tiny_policy, prompt=QUESTION, max_tokens=2)
    base = metrics(prm_server.url)
    resp = client.completions.create(
        model="tiny", prompt=QUESTION, seed=8,
        extra_body={"search": {"strategy": "BeamSearch", **fields, "verifier": "prm",
                               "return_tree": True}})
    assert resp.choices[0].text == want.best.text
    assert resp.model_extra["search"]["tree"] == json.loads(want.tree.to_json())
    assert resp.usage.prm_tokens == want.stats["prm_tokens"] > 0
    assert resp.usage.score_calls == want.stats["score_calls"] > 0
    m = metrics(prm_server.url)
    assert m["ponder_prm_tokens_total"] - base["ponder_prm_tokens_total"] == resp.usage.prm_tokens
    assert m["ponder_search_rounds_total"] - base["ponder_search_rounds_total"] == \
        resp.usage.rounds
    assert m["ponder_prm_kv_blocks_used"] + m["ponder_prm_kv_blocks_free"] == 4


def test_a_confidence_search_on_a_prm_server_leaves_the_prm_out(prm_server, prm_engine,
                                                               engine):
    fields = dict(n=2, width=2, max_steps=2, max_step_tokens=4)
    want = engine.search(QUESTION, ponder.BeamSearch(**fields, seed=3), chat=False)  # no PRM
    same = prm_engine.search(QUESTION, ponder.BeamSearch(**fields, seed=3), chat=False,
                             prm="confidence")
    assert same.tree.to_json() == want.tree.to_json()
    assert same.stats["prm_tokens"] == 0
    client = openai.OpenAI(base_url=f"{prm_server.url}/v1", api_key="unused", max_retries=0)
    resp = client.completions.create(
        model="tiny", prompt=QUESTION, seed=3,
        extra_body={"search": {"strategy": "beam", **fields, "verifier": "confidence",
                               "return_tree": True}})
    assert resp.choices[0].text == want.best.text
    assert resp.model_extra["search"]["tree"] == json.loads(want.tree.to_json())
    assert resp.usage.prm_tokens == 0
