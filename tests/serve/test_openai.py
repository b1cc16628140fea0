"""The OpenAI endpoints through the official openai client, checked against the in-process
Engine on the same tiny model: completions and chat, streamed and not, n > 1, logprobs,
token beam search, search through ``extra_body``, 32 concurrent streams."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

import ponder
from tests.serve.conftest import metrics

PROMPT = "Write a short poem about the sea."
QUESTION = "What is 12 + 30?"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                         timeout=120)


def _tokens(engine, ids: list[int]) -> list[str]:
    return [engine.tokenizer.decode([t], skip_special_tokens=False) for t in ids]


def _chosen(entries: list, ids: list[int]) -> list[float]:
    return [e[t] if isinstance(e, dict) else e for e, t in zip(entries, ids, strict=True)]


def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]
    assert models.data[0].max_model_len == 1024


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completions_with_a_seed_equal_engine_generate(client, server, engine, stream):
    want = engine.generate(PROMPT, ponder.Sampling(max_tokens=8, n=2, seed=11, logprobs=2),
                           chat=False)[0]
    kw = dict(model=server.model, prompt=PROMPT, max_tokens=8, n=2, seed=11, logprobs=2)
    if stream:
        got = {}
        chunks = client.completions.create(**kw, stream=True,
                                           stream_options={"include_usage": True})
        for chunk in chunks:
            if not chunk.choices:
                usage = chunk.usage
                continue
            (c,) = chunk.choices
            g = got.setdefault(c.index, {"text": "", "tokens": [], "lps": [], "finish": None})
            g["text"] += c.text
            if c.logprobs is not None:
                g["tokens"] += c.logprobs.tokens
                g["lps"] += c.logprobs.token_logprobs
            g["finish"] = c.finish_reason or g["finish"]
        choices = [got[i] for i in sorted(got)]
    else:
        resp = client.completions.create(**kw)
        usage = resp.usage
        choices = [{"text": c.text, "tokens": c.logprobs.tokens, "finish": c.finish_reason,
                    "lps": c.logprobs.token_logprobs} for c in resp.choices]
        assert len(resp.choices[0].logprobs.top_logprobs[0]) >= 2
    assert len(choices) == 2
    for c, w in zip(choices, want.outputs, strict=True):
        assert c["text"] == w.text
        assert c["tokens"] == _tokens(engine, w.token_ids)
        assert c["lps"] == pytest.approx(_chosen(w.logprobs, w.token_ids), abs=1e-4)
        assert c["finish"] == w.finish_reason
    assert usage.prompt_tokens == len(want.prompt_token_ids)
    assert usage.completion_tokens == sum(len(w.token_ids) for w in want.outputs)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_with_a_seed_equals_engine_generate_with_the_chat_template(client, server, engine,
                                                                        stream):
    want = engine.generate(PROMPT, ponder.Sampling(max_tokens=8, n=3, seed=4, logprobs=2,
                                                   temperature=0.9, top_k=50))[0]
    kw = dict(model=server.model, messages=[{"role": "user", "content": PROMPT}],
              max_completion_tokens=8, n=3, seed=4, temperature=0.9, logprobs=True,
              top_logprobs=2, extra_body={"top_k": 50})
    if stream:
        got, roles = {}, set()
        for chunk in client.chat.completions.create(**kw, stream=True):
            (c,) = chunk.choices
            g = got.setdefault(c.index, {"text": "", "tokens": [], "finish": None})
            if c.delta.role:
                roles.add(c.index)
            g["text"] += c.delta.content or ""
            if c.logprobs is not None:
                g["tokens"] += [t.token for t in c.logprobs.content]
            g["finish"] = c.finish_reason or g["finish"]
        assert roles == {0, 1, 2}
        choices = [got[i] for i in sorted(got)]
    else:
        resp = client.chat.completions.create(**kw)
        assert resp.object == "chat.completion"
        assert resp.usage.prompt_tokens == len(want.prompt_token_ids)
        choices = [{"text": c.message.content, "finish": c.finish_reason,
                    "tokens": [t.token for t in c.logprobs.content]} for c in resp.choices]
        top = resp.choices[0].logprobs.content[0].top_logprobs
        assert len(top) == 2 and top[0].logprob >= top[1].logprob
    for c, w in zip(choices, want.outputs, strict=True):
        assert (c["text"], c["finish"]) == (w.text, w.finish_reason)
        assert c["tokens"] == _tokens(engine, w.token_ids)


def test_stop_strings_stop_token_ids_and_ignore_eos_reach_sampling(client, server, engine):
    base = engine.generate(PROMPT, ponder.Sampling(max_tokens=12, seed=2))[0].outputs[0]
    stop_id = base.token_ids[3]
    want = engine.generate(PROMPT, ponder.Sampling(max_tokens=12, seed=2,
                                                   stop_token_ids=[stop_id]))[0].outputs[0]
    resp = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
        seed=2, extra_body={"stop_token_ids": [stop_id], "ignore_eos": True})
    assert resp.choices[0].message.content == want.text
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == 4
    stop = base.text[len(base.text) // 2:][:3]
    want = engine.generate(PROMPT, ponder.Sampling(max_tokens=12, seed=2, stop=[stop]))[0]
    resp = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
        seed=2, stop=[stop])
    assert resp.choices[0].message.content == want.outputs[0].text
    assert stop not in resp.choices[0].message.content


def test_token_beam_search_equals_engine_beam_search(client, server, engine):
    want = engine.beam_search(PROMPT, width=3, max_tokens=6, num_return=3)
    resp = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": PROMPT}], max_tokens=6,
        n=3, extra_body={"use_beam_search": True})
    assert [c.message.content for c in resp.choices] == [b.text for b in want]
    assert resp.usage.completion_tokens == sum(len(b.token_ids) for b in want)


SEARCHES = [
    ("bon", ponder.BestOfN, dict(n=4)),
    ("beam", ponder.BeamSearch, dict(n=4, width=2)),
    ("dvts", ponder.DVTS, dict(n=4, width=2)),
    ("pf", ponder.ParticleFilter, dict(n=3, temperature=0.5)),
    ("pg", ponder.ParticleGibbs, dict(n=3, iterations=2)),
    ("astar", ponder.AStar, dict(k=2, budget=4)),
    ("MCTS", ponder.MCTS, dict(simulations=4, k=2)),
]
COMMON = dict(max_steps=3, max_step_tokens=8, seed=5)


@pytest.mark.parametrize("name,cls,fields", SEARCHES, ids=[s[0] for s in SEARCHES])
def test_a_search_in_extra_body_equals_engine_search(client, server, engine, name, cls,
                                                     fields):
    want = engine.search(QUESTION, cls(**fields, **COMMON))
    resp = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": QUESTION}], n=2,
        extra_body={"search": {"strategy": name, **fields, **COMMON, "return_tree": True,
                               "verifier": "confidence"}})
    assert resp.choices[0].message.content == want.best.text
    assert [c.message.content for c in resp.choices] == [c.text for c in want.candidates[:2]]
    search = resp.model_extra["search"]
    assert search["answer"] == want.answer
    assert search["candidates"][0]["scores"] == pytest.approx(want.best.scores)
    assert search["tree"] == json.loads(want.tree.to_json())
    u = resp.usage
    assert u.completion_tokens == want.stats["tokens_generated"] > 0
    for key in ("tokens_prefilled", "prm_tokens", "score_calls", "rounds"):
        assert getattr(u, key) == want.stats[key], key


def test_a_streamed_search_sends_progress_per_round_then_the_answer(client, server, engine):
    spec = dict(n=4, width=2, max_steps=3, max_step_tokens=8)
    want = engine.search(QUESTION, ponder.DVTS(**spec, seed=9), system_prompt="Be brief.")
    progress, text, extra = [], "", None
    stream = client.chat.completions.create(
        model=server.model, seed=9, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": QUESTION}],
        extra_body={"search": {"strategy": "DVTS", **spec}})
    for chunk in stream:
        if chunk.object == "ponder.search.progress":
            progress.append(chunk.model_extra)
            continue
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            extra = chunk.model_extra.get("search", extra)
        else:
            usage = chunk.usage
    assert [p["round"] for p in progress] == list(range(1, want.stats["rounds"] + 1))
    assert progress[-1]["nodes"] == len(want.tree.nodes)
    assert all(a["tokens_generated"] <= b["tokens_generated"]
               for a, b in zip(progress, progress[1:], strict=False))
    assert text == want.best.text and extra["answer"] == want.answer
    assert usage.rounds == want.stats["rounds"]


def test_32_concurrent_streaming_clients_all_complete(server, engine):
    prompts = [f"Count the ships in harbour number {i}." for i in range(32)]
    want = engine.generate(prompts, ponder.Sampling(max_tokens=12, seed=3, ignore_eos=True))

    async def one(client, prompt):
        text, usage = "", None
        stream = await client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": prompt}], max_tokens=12,
            seed=3, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            else:
                usage = chunk.usage
        return text, usage

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused",
                                      max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    results = asyncio.run(main())
    assert [t for t, _ in results] == [w.outputs[0].text for w in want]
    assert all(u.completion_tokens == 12 for _, u in results)
    m = metrics(server.url)
    assert m["ponder_requests_running"] == 0 and m["ponder_requests_waiting"] == 0
    assert m["ponder_time_to_first_token_seconds_count"] >= 32
