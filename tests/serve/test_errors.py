"""Raw HTTP: OpenAI error objects (400 naming the field, 401, 404, 429), a request failing
inside the engine next to good ones, clients that go away mid-request, /health, /metrics."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import ponder
from tests.serve.conftest import API_KEY, metrics
from tests.serve.httpclient import httpx

PROMPT = "Write a short poem about the sea."
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": PROMPT}]


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


BAD = [
    # (endpoint, body, param, words in the message)
    (COMPLETIONS, {"prompt": PROMPT, "n": -1}, "n", ">= 1"),
    (CHAT, {"messages": USER, "n": 0}, "n", ">= 1"),
    (CHAT, {"messages": USER, "search": {"strategy": "bfs"}}, "search.strategy", "'bfs'"),
    (CHAT, {"messages": USER, "search": {"strategy": "beam", "n": 6, "width": 4}}, "search.n",
     "multiple of width"),
    (CHAT, {"messages": USER, "search": {"strategy": "dvts", "depth": 3}}, "search.depth",
     "not a field of DVTS"),
    (CHAT, {"messages": USER, "search": {"strategy": "mcts", "c_puct": -1}}, "search.c_puct",
     ">= 0"),
    (CHAT, {"messages": USER, "search": {"strategy": "bon"}, "temperature": 0.5},
     "temperature", "policy_temperature"),
    (CHAT, {"messages": USER, "search": {"strategy": "bon", "verifier": "prm"}},
     "search.verifier", "--prm"),
    (CHAT, {"messages": [{"role": "user", "content": "sea " * 1100}], "max_tokens": 4},
     "messages", "the context holds 1024"),
    (COMPLETIONS, {"prompt": "sea " * 1100, "max_tokens": 4}, "prompt", "context holds"),
    (COMPLETIONS, {"prompt": PROMPT, "temperature": -0.5}, "temperature", ">= 0"),
    (CHAT, {"messages": USER, "max_completion_tokens": 0}, "max_completion_tokens", ">= 1"),
    (CHAT, {"messages": USER, "top_logprobs": 2}, "top_logprobs", "logprobs"),
    (CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 99999}, "top_logprobs",
     "vocabulary"),
    (COMPLETIONS, {"prompt": PROMPT, "top_k": 10 ** 6}, "top_k", "vocabulary"),
    (COMPLETIONS, {"prompt": PROMPT, "stop_token_ids": [10 ** 6]}, "stop_token_ids", "in [0"),
    (COMPLETIONS, {"prompt": PROMPT, "max_tokens": "many"}, "max_tokens", "integer"),
    (COMPLETIONS, {"prompt": PROMPT, "frequency_penalty": 0.5}, "frequency_penalty",
     "not supported"),
    (CHAT, {"messages": []}, "messages", "at least 1"),
    (COMPLETIONS, {"max_tokens": 3}, "prompt", "required"),
    (CHAT, {"messages": USER, "use_beam_search": True, "n": 2, "logprobs": True},
     "logprobs", "beam search"),
    ("/v1/score", {"question": "q", "steps": ["a"]}, None, "--prm"),
]


@pytest.mark.parametrize("path,body,param,words", BAD,
                         ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_a_bad_field_is_a_400_naming_it(server, path, body, param, words):
    for stream in (False, True):
        if path == "/v1/score" and stream:
            continue
        err = _error(httpx.post(server.url + path, json={**body, "stream": stream},
                                timeout=60), 400)
        assert err["param"] == param and err["type"] == "BadRequestError"
        assert words in err["message"]


def test_a_body_that_is_not_json_is_a_400(server):
    err = _error(httpx.post(server.url + CHAT, content=b"{not json",
                            headers={"content-type": "application/json"}, timeout=30), 400)
    assert "JSON" in err["message"]


def test_another_model_name_is_a_404(server):
    resp = httpx.post(server.url + CHAT, json={"model": "gpt-4", "messages": USER}, timeout=30)
    err = _error(resp, 404)
    assert err["param"] == "model" and "gpt-4" in err["message"]


def test_health_and_metrics(server):
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for name in ("ponder_requests_running", "ponder_requests_waiting", "ponder_kv_blocks_used",
                 "ponder_kv_blocks_free", "ponder_prm_kv_blocks_used",
                 "ponder_prm_kv_blocks_free", "ponder_tokens_generated_total",
                 "ponder_tokens_prefilled_total", "ponder_search_rounds_total",
                 "ponder_prm_tokens_total", "ponder_time_to_first_token_seconds_bucket",
                 "ponder_inter_token_latency_seconds_bucket"):
        assert f"\n{name}" in text, name


def _settles(url: str, base: dict, max_tokens: int) -> dict:
    """Waits until the server is idle with the KV it had before; returns its metrics."""
    deadline = time.monotonic() + 30
    while True:
        m = metrics(url)
        idle = m["ponder_requests_running"] == 0 and m["ponder_requests_waiting"] == 0
        if idle and m["ponder_kv_blocks_used"] == base["ponder_kv_blocks_used"]:
            break
        assert time.monotonic() < deadline, f"the KV was not freed: {m}"
        time.sleep(0.1)
    generated = m["ponder_tokens_generated_total"] - base["ponder_tokens_generated_total"]
    assert 0 < generated < max_tokens, "the request was not aborted"
    return m


def test_a_client_that_disconnects_mid_stream_frees_its_kv(server):
    base = metrics(server.url)
    body = {"prompt": PROMPT, "max_tokens": 900, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + COMPLETIONS, json=body, timeout=60) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
        assert metrics(server.url)["ponder_kv_blocks_used"] > base["ponder_kv_blocks_used"]
    _settles(server.url, base, 900)


def test_a_client_that_gives_up_on_a_whole_response_frees_its_kv(server):
    base = metrics(server.url)
    body = {"messages": USER, "max_tokens": 900, "ignore_eos": True}

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            request = asyncio.ensure_future(client.post(CHAT, json=body))
            while metrics(server.url)["ponder_kv_blocks_used"] <= base["ponder_kv_blocks_used"]:
                assert not request.done(), "the request ended before it was seen running"
                await asyncio.sleep(0.01)
            request.cancel()   # the client goes away: its connection is closed
            await asyncio.gather(request, return_exceptions=True)

    asyncio.run(main())
    _settles(server.url, base, 900)


def test_a_search_whose_client_disconnects_is_aborted(server):
    base = metrics(server.url)
    body = {"messages": USER, "stream": True, "search": {
        "strategy": "beam", "n": 8, "width": 2, "max_steps": 40, "max_step_tokens": 20}}
    with httpx.stream("POST", server.url + CHAT, json=body, timeout=60) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if "ponder.search.progress" in line:
                break
    _settles(server.url, base, 8 * 40 * 20)


def test_without_the_api_key_is_a_401(strict_server):
    url = strict_server.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        err = _error(httpx.post(url + CHAT, json={"messages": USER, "max_tokens": 2},
                                headers=headers, timeout=30), 401)
        assert err["type"] == "AuthenticationError"
        assert httpx.get(url + "/v1/models", headers=headers, timeout=30).status_code == 401
    ok = httpx.post(url + CHAT, json={"messages": USER, "max_tokens": 2},
                    headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    assert httpx.get(url + "/metrics", timeout=10).status_code == 200


def test_more_than_max_queued_waiting_requests_get_429(strict_server):
    async def main():
        async with httpx.AsyncClient(base_url=strict_server.url, timeout=120, headers={
                "Authorization": f"Bearer {API_KEY}"}) as client:
            body = {"prompt": PROMPT, "max_tokens": 24, "ignore_eos": True}
            return await asyncio.gather(*(client.post(COMPLETIONS, json=body)
                                          for _ in range(16)))

    responses = asyncio.run(main())
    codes = [r.status_code for r in responses]
    assert 429 in codes and 200 in codes and set(codes) == {200, 429}, codes
    for r in responses:
        if r.status_code == 429:
            assert _error(r, 429)["type"] == "RateLimitError"
        else:
            assert r.json()["usage"]["completion_tokens"] == 24


LONG_QUESTION = "What is the sum of two and two? Answer with care please."


def test_a_request_that_fails_in_the_engine_fails_alone(prm_server, engine):
    """The PRM's KV pool holds 64 tokens: the search's scoring text outgrows it in the
    engine (past the door), so the search fails; the requests batched with it do not."""
    url = prm_server.url
    base = metrics(url)
    prompts = [f"Name {i} colours of the sea." for i in range(4)]
    want = engine.generate(prompts, ponder.Sampling(max_tokens=16, seed=1, ignore_eos=True))
    search = {"strategy": "beam", "n": 2, "width": 2, "max_steps": 3, "max_step_tokens": 40}

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            def chat(content, **kw):
                return client.post(CHAT, json={"messages": [{"role": "user",
                                                            "content": content}], **kw})
            return await asyncio.gather(
                chat(LONG_QUESTION, search=search),
                chat(LONG_QUESTION, search=search, stream=True),
                *(chat(p, max_tokens=16, seed=1, ignore_eos=True) for p in prompts))

    failed, streamed, *good = asyncio.run(main())
    err = _error(failed, 500)
    assert "PRM" in err["message"] and "context" in err["message"]
    assert streamed.status_code == 200   # it failed after its progress events started
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and '"error"' in events[-2] and "PRM" in events[-2]
    assert [r.json()["choices"][0]["message"]["content"] for r in good] == [
        w.outputs[0].text for w in want]
    m = metrics(url)
    assert m["ponder_requests_running"] == 0
    assert m["ponder_kv_blocks_used"] == base["ponder_kv_blocks_used"]
    assert m["ponder_prm_kv_blocks_used"] == base["ponder_prm_kv_blocks_used"]


def test_sigterm_lets_a_running_stream_finish_then_exits_0(strict_server):
    """Graceful shutdown: the server stops accepting, the stream in flight runs to its end,
    the engine shuts down and the process exits 0. (Last in this module: it stops the
    strict server.)"""
    body = {"prompt": PROMPT, "max_tokens": 120, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", strict_server.url + COMPLETIONS, json=body, headers=headers,
                      timeout=120) as resp:
        lines = resp.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
        strict_server.terminate()
        rest = list(lines)
    events = [line[6:] for line in rest if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 120
    assert strict_server.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(strict_server.url + "/health", timeout=5)
