"""AsyncEngine: one background thread steps the engine for asyncio callers. Streams equal
the synchronous engine's results; many consumers share the engine; a consumer that walks
away frees its KV; errors reach the right caller (door errors from the iterator, engine-side
ones in the final output) and never stop the thread; QueueFull, shutdown, EngineClosed."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading

import pytest

import ponder
from ponder.search.results import SearchResult

PROMPT = [5, 17, 33, 8, 91, 4, 12, 9]
Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def verifier(question, steps):
    return [0.2 + 0.6 * ((len(s) + i) % 3) / 2 for i, s in enumerate(steps)]


def broken_verifier(question, steps):
    raise RuntimeError("the verifier broke")


def spec(**kw):
    base = dict(n=4, width=2, max_steps=3, max_step_tokens=6, seed=7)
    base.update(kw)
    return ponder.BeamSearch(**base)


@pytest.fixture(scope="module")
def ref(tiny_policy):
    return ponder.Engine(tiny_policy, kv_blocks=256)


@pytest.fixture(scope="module")
def aeng(tiny_policy):
    a = ponder.AsyncEngine(ponder.Engine(tiny_policy, kv_blocks=256))
    yield a
    a.close()


def new_thread(make):
    """Builds an AsyncEngine with make(); returns it and its engine thread."""
    before = set(threading.enumerate())
    a = make()
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name == "ponder-engine"]
    return a, thread


async def collect(agen) -> list:
    return [item async for item in agen]


def joined(items) -> dict[int, dict]:
    """Concatenates the deltas of each completion index."""
    out: dict[int, dict] = {}
    for item in items[:-1]:
        assert isinstance(item, list) and item
        assert len({d.index for d in item}) == len(item)  # one delta per index per step
        for d in item:
            c = out.setdefault(d.index, {"tokens": [], "text": "", "logprobs": [],
                                         "reasons": []})
            assert not c["reasons"], "a delta after the completion's finish_reason"
            c["tokens"] += d.token_ids
            c["text"] += d.text
            c["logprobs"] += d.logprobs
            if d.finish_reason is not None:
                c["reasons"].append(d.finish_reason)
    return out


async def until_idle(a: ponder.AsyncEngine, timeout: float = 30.0) -> dict:
    for _ in range(int(timeout / 0.01)):
        st = a.stats()
        if st["running"] == 0 and st["waiting"] == 0:
            return st
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine did not become idle: {a.stats()}")


def assert_clean(a: ponder.AsyncEngine) -> None:
    """Called once the engine thread is idle (blocked on its command queue)."""
    assert not a.engine.has_unfinished()
    assert a.engine.kv.stats()["used"] == 0
    assert a.stats()["kv_blocks_used"] == 0


@pytest.mark.parametrize("prompt,logprobs", [(PROMPT, None), ("Tell me a story.", 3),
                                             (PROMPT, 0)], ids=["ids", "chat-top3", "ids-lp"])
def test_stream_equals_engine_generate(aeng, ref, prompt, logprobs):
    sp = ponder.Sampling(max_tokens=12, temperature=1.0, seed=5, logprobs=logprobs)
    items = asyncio.run(collect(aeng.generate(prompt, sp)))
    final = items[-1]
    assert isinstance(final, ponder.RequestOutput) and final.finished and final.error is None
    (want,) = ref.generate([prompt], sp)
    got = final.outputs[0]
    assert got.token_ids == want.outputs[0].token_ids and got.text == want.outputs[0].text
    c = joined(items)[0]
    assert c["tokens"] == got.token_ids and c["text"] == got.text
    assert c["reasons"] == [got.finish_reason]
    if logprobs is None:
        assert c["logprobs"] == []
    else:
        assert len(c["logprobs"]) == len(got.token_ids) and c["logprobs"] == got.logprobs
        assert json.dumps(c["logprobs"]) == json.dumps(got.logprobs)
        for a, b in zip(got.logprobs, want.outputs[0].logprobs, strict=True):
            if logprobs:
                assert a.keys() == b.keys()
                assert list(a.values()) == pytest.approx(list(b.values()), abs=1e-4)
            else:
                assert a == pytest.approx(b, abs=1e-4)


def test_n_completions_stream_every_index(aeng, ref):
    sp = ponder.Sampling(n=3, max_tokens=10, seed=2, logprobs=1)
    items = asyncio.run(collect(aeng.generate(PROMPT, sp)))
    final = items[-1]
    (want,) = ref.generate([PROMPT], sp)
    assert [o.token_ids for o in final.outputs] == [o.token_ids for o in want.outputs]
    streams = joined(items)
    assert sorted(streams) == [0, 1, 2]
    for o in final.outputs:
        c = streams[o.index]
        assert c["tokens"] == o.token_ids and c["text"] == o.text
        assert c["logprobs"] == o.logprobs and c["reasons"] == [o.finish_reason]


def test_sixteen_concurrent_consumers(aeng, ref):
    prompts = [PROMPT[i % 8:] + [40 + i] for i in range(16)]
    sp = ponder.Sampling(max_tokens=8, seed=11)

    async def main():
        return await asyncio.gather(*(collect(aeng.generate(p, sp)) for p in prompts))

    results = asyncio.run(main())
    want = ref.generate(prompts, sp)
    for items, w in zip(results, want, strict=True):
        assert items[-1].error is None
        assert joined(items)[0]["tokens"] == items[-1].outputs[0].token_ids
        assert items[-1].outputs[0].token_ids == w.outputs[0].token_ids
    asyncio.run(until_idle(aeng))
    assert_clean(aeng)


def test_search_streams_progress_then_the_engines_result(aeng, ref):
    items = asyncio.run(collect(aeng.search(Q, spec(), prm=verifier)))
    want = ref.search(Q, spec(), prm=verifier)
    res, progress = items[-1], items[:-1]
    assert isinstance(res, SearchResult) and res.error is None
    assert res.answer == want.answer and res.tree.to_json() == want.tree.to_json()
    assert all(isinstance(p, ponder.SearchProgress) for p in progress)
    assert [p.round for p in progress] == list(range(1, res.stats["rounds"] + 1))
    assert len(progress) >= 2
    assert progress[-1].nodes == len(json.loads(res.tree.to_json())["nodes"])
    assert progress[-1].tokens_generated == res.stats["tokens_generated"]
    assert all(a.nodes < b.nodes and a.tokens_generated < b.tokens_generated
               for a, b in zip(progress, progress[1:], strict=False))
    assert asyncio.run(until_idle(aeng))["search_rounds"] >= len(progress)


@pytest.mark.parametrize("how", ["break", "cancel", "drop", "drop-no-hooks"])
def test_a_consumer_that_walks_away_aborts_its_request(aeng, how):
    sp = ponder.Sampling(max_tokens=400, seed=1, ignore_eos=True)

    async def main():
        agen = aeng.generate(PROMPT, sp)
        if how == "break":
            async for item in agen:
                assert isinstance(item, list)
                break
            del agen
        elif how.startswith("drop"):  # never closed: garbage-collected after one item
            if how == "drop-no-hooks":  # no event loop finalizer: Python closes it
                sys.set_asyncgen_hooks(firstiter=None, finalizer=None)
                agen = aeng.generate(PROMPT, sp)
            assert isinstance(await agen.__anext__(), list)
            del agen
        else:
            first = asyncio.Event()

            async def consume():
                async for _ in aeng.generate(PROMPT, sp):
                    first.set()

            task = asyncio.create_task(consume())
            await first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return await until_idle(aeng)

    st = asyncio.run(main())
    assert st["tokens_generated"] > 0
    assert_clean(aeng)


def test_door_errors_raise_from_the_iterator_naming_the_argument(aeng):
    vocab = aeng.engine.config.vocab_size
    too_long = [7] * aeng.engine.max_context

    async def first(agen):
        return await agen.__anext__()

    cases = [(aeng.generate(PROMPT, ponder.Sampling(top_k=vocab + 1)), ValueError, "top_k"),
             (aeng.generate(PROMPT, ponder.Sampling(logprobs=vocab + 1)), ValueError,
              "logprobs"),
             (aeng.generate(too_long, ponder.Sampling()), ValueError, "prompt has"),
             (aeng.generate(PROMPT, ponder.Sampling(), chat="yes"), TypeError, "chat"),
             (aeng.generate(PROMPT, spec()), TypeError, "sampling"),
             (aeng.search(Q, ponder.Sampling()), TypeError, "spec"),
             (aeng.search(Q, spec(), prm="not callable"), TypeError, "prm"),
             (aeng.search(" ".join(["word"] * 2000), spec()), ValueError, "question has")]
    for agen, exc, match in cases:
        with pytest.raises(exc, match=match):
            asyncio.run(first(agen))
    assert aeng.stats()["waiting"] == 0
    items = asyncio.run(collect(aeng.generate(PROMPT, ponder.Sampling(max_tokens=3))))
    assert items[-1].error is None  # the engine serves on


def test_queue_full(tiny_policy):
    # One sequence runs at a time: the second request waits, and the third is one too many.
    a = ponder.AsyncEngine(ponder.Engine(tiny_policy, kv_blocks=128, max_num_seqs=1),
                           max_queued=1)
    long = ponder.Sampling(max_tokens=60, seed=1, ignore_eos=True)

    async def main():
        running = a.generate(PROMPT, long)
        assert isinstance(await running.__anext__(), list)
        waiting = asyncio.create_task(collect(a.generate(PROMPT, ponder.Sampling(max_tokens=4))))
        await asyncio.sleep(0)  # it is submitted
        for _ in range(3):
            with pytest.raises(ponder.QueueFull, match="max_queued=1"):
                await a.generate(PROMPT, ponder.Sampling(max_tokens=4)).__anext__()
        with pytest.raises(ponder.QueueFull):
            await a.search(Q, spec()).__anext__()
        rest = await collect(running)
        assert rest[-1].error is None and len(rest[-1].outputs[0].token_ids) == 60
        assert (await waiting)[-1].error is None
        await until_idle(a)
        # Room again.
        return await collect(a.generate(PROMPT, ponder.Sampling(max_tokens=4)))

    try:
        assert asyncio.run(main())[-1].error is None
        assert_clean(a)
    finally:
        a.close()


def test_shutdown_finishes_running_requests_then_refuses(tiny_policy):
    a, thread = new_thread(lambda: ponder.AsyncEngine(ponder.Engine(tiny_policy,
                                                                    kv_blocks=128)))
    sp = ponder.Sampling(max_tokens=30, seed=1, ignore_eos=True)

    async def main():
        agen = a.generate(PROMPT, sp)
        first = await agen.__anext__()
        closing = asyncio.create_task(a.shutdown(timeout=60))
        await asyncio.sleep(0)
        with pytest.raises(ponder.EngineClosed):
            await a.generate(PROMPT, sp).__anext__()
        with pytest.raises(ponder.EngineClosed):
            await a.search(Q, spec()).__anext__()
        with pytest.raises(ponder.EngineClosed):
            await a.beam_search(PROMPT, width=2, max_tokens=4)
        rest = await collect(agen)
        await closing
        return [first] + rest

    items = asyncio.run(main())
    assert items[-1].error is None and len(items[-1].outputs[0].token_ids) == 30
    assert joined(items)[0]["tokens"] == items[-1].outputs[0].token_ids
    assert not thread.is_alive()
    assert a.engine.kv.stats()["used"] == 0


def test_shutdown_past_its_timeout_aborts_what_runs(tiny_policy):
    a, thread = new_thread(lambda: ponder.AsyncEngine(ponder.Engine(tiny_policy,
                                                                    kv_blocks=128)))

    async def main():
        agen = a.generate(PROMPT, ponder.Sampling(n=2, max_tokens=900, ignore_eos=True))
        await agen.__anext__()
        search = a.search(Q, spec(max_step_tokens=200, max_steps=50), prm=verifier)
        task = asyncio.create_task(collect(search))
        await asyncio.sleep(0.05)
        await a.shutdown(timeout=0)
        return await collect(agen), await task

    gen_items, search_items = asyncio.run(main())
    final = gen_items[-1]
    assert final.finished and "shut down" in final.error
    assert [o.finish_reason for o in final.outputs] == ["abort", "abort"]
    assert sorted(joined(gen_items)) == [0, 1]
    assert all(c["reasons"] == ["abort"] for c in joined(gen_items).values())
    assert "shut down" in search_items[-1].error
    assert not thread.is_alive()
    assert a.engine.kv.stats()["used"] == 0


def test_a_failing_verifier_fails_only_its_search(aeng):
    async def main():
        return await asyncio.gather(
            collect(aeng.search(Q, spec(), prm=broken_verifier)),
            collect(aeng.generate(PROMPT, ponder.Sampling(max_tokens=20, seed=4))),
            collect(aeng.search(Q, spec(seed=8), prm=verifier)))

    bad, gen, good = asyncio.run(main())
    assert "the verifier broke" in bad[-1].error and bad[-1].answer == ""
    assert gen[-1].error is None and len(gen[-1].outputs[0].token_ids) == 20
    assert good[-1].error is None and good[-1].candidates
    asyncio.run(until_idle(aeng))
    assert_clean(aeng)


def test_a_step_that_raises_fails_the_requests_in_flight_and_is_logged(tiny_policy, caplog):
    a = ponder.AsyncEngine(ponder.Engine(tiny_policy, kv_blocks=128))
    real_step, calls = a.engine.step, []

    def step():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real_step()

    a.engine.step = step

    async def main():
        return await asyncio.gather(
            collect(a.generate(PROMPT, ponder.Sampling(n=2, max_tokens=20, seed=4))),
            collect(a.search(Q, spec(), prm=verifier)))

    try:
        with caplog.at_level(logging.ERROR, logger="ponder.engine.async_engine"):
            gen, search = asyncio.run(main())
        assert "step() raised" in caplog.text and "boom" in caplog.text
        assert gen[-1].error == "RuntimeError: boom" and search[-1].error == "RuntimeError: boom"
        assert [o.finish_reason for o in gen[-1].outputs] == ["error", "error"]
        asyncio.run(until_idle(a))
        assert_clean(a)
        # The thread serves on.
        items = asyncio.run(collect(a.generate(PROMPT, ponder.Sampling(max_tokens=5))))
        assert items[-1].error is None and len(items[-1].outputs[0].token_ids) == 5
    finally:
        a.close()


def test_outputs_arrive_even_if_step_events_go_missing(tiny_policy, ref):
    # Guards the loop against a request that ends without the events that say so: it must
    # not step an idle engine forever, and the output is read instead.
    a = ponder.AsyncEngine(ponder.Engine(tiny_policy, kv_blocks=128))
    real_step = a.engine.step
    a.engine.step = lambda: [ev for ev in real_step() if not ev.finished]
    sp = ponder.Sampling(n=2, max_tokens=9, seed=6, stop=["zz"])
    try:
        items = asyncio.run(collect(a.generate(PROMPT, sp)))
        (want,) = ref.generate([PROMPT], sp)
        assert [o.token_ids for o in items[-1].outputs] == [o.token_ids for o in want.outputs]
        for i, c in joined(items).items():
            assert c["tokens"] == want.outputs[i].token_ids
            assert c["text"] == want.outputs[i].text
            assert c["reasons"] == [want.outputs[i].finish_reason]
        asyncio.run(until_idle(a))
        assert_clean(a)
    finally:
        a.close()


def test_the_thread_survives_a_verifier_that_raises_system_exit(tiny_policy):
    a = ponder.AsyncEngine(ponder.Engine(tiny_policy, kv_blocks=128))

    def exits(question, steps):
        raise SystemExit(3)

    try:
        items = asyncio.run(collect(a.search(Q, spec(), prm=exits)))
        assert items[-1].error.startswith("SystemExit")
        items = asyncio.run(collect(a.generate(PROMPT, ponder.Sampling(max_tokens=5))))
        assert items[-1].error is None
        asyncio.run(until_idle(a))
        assert_clean(a)
    finally:
        a.close()


def test_beam_search_next_to_a_stream(aeng, ref):
    sp = ponder.Sampling(max_tokens=40, seed=9, ignore_eos=True, stop=["zz"])

    async def main():
        # The stream is in flight while the beam search steps the engine on its own.
        items, beams = await asyncio.gather(collect(aeng.generate(PROMPT, sp)),
                                            aeng.beam_search(PROMPT, width=3, max_tokens=8))
        return beams, items

    beams, items = asyncio.run(main())
    want = ref.beam_search(PROMPT, width=3, max_tokens=8)
    assert [b.token_ids for b in beams] == [b.token_ids for b in want]
    (gen,) = ref.generate([PROMPT], sp)
    c = joined(items)[0]
    assert items[-1].outputs[0].token_ids == gen.outputs[0].token_ids == c["tokens"]
    assert c["text"] == gen.outputs[0].text
    with pytest.raises(ValueError, match="width"):
        asyncio.run(aeng.beam_search(PROMPT, width=0, max_tokens=4))
    asyncio.run(until_idle(aeng))
    assert_clean(aeng)


def test_stats_snapshot(aeng):
    st = aeng.stats()
    assert set(st) == {"running", "waiting", "kv_blocks_used", "kv_blocks_free",
                       "prm_kv_blocks_used", "prm_kv_blocks_free", "tokens_generated",
                       "tokens_prefilled", "search_rounds", "prm_tokens", "forward_passes",
                       "preemptions"}
    assert st["kv_blocks_free"] == aeng.engine.kv.stats()["free"]
    assert st["prm_kv_blocks_used"] == st["prm_kv_blocks_free"] == 0  # no PRM here
    with pytest.raises(ValueError, match="max_queued"):
        ponder.AsyncEngine(aeng.engine, max_queued=0)


def test_score_and_a_prm_search_through_the_engines_prm(tiny_policy):
    kw = dict(kv_blocks=128, prm_format="self-verify", prm_kv_blocks=128)
    a, ref = ponder.AsyncEngine(ponder.Engine(tiny_policy, **kw)), ponder.Engine(tiny_policy, **kw)
    steps = [["Three plus four.", "It is 7."], ["Seven."]]

    async def main():
        scores = await a.score(Q, steps)
        items = await collect(a.search(Q, spec(n=2, max_steps=2)))
        return scores, items

    try:
        scores, items = asyncio.run(main())
        want_scores = ref.score(Q, steps)
        assert [len(s) for s in scores] == [2, 1]
        for got, exp in zip(scores, want_scores, strict=True):
            assert got == pytest.approx(exp, abs=1e-5)
        want = ref.search(Q, spec(n=2, max_steps=2))
        assert items[-1].error is None and items[-1].answer == want.answer
        assert items[-1].tree.to_json() == want.tree.to_json()
        st = asyncio.run(until_idle(a))
        assert st["prm_tokens"] > 0 and st["prm_kv_blocks_free"] > 0
        assert st["prm_kv_blocks_used"] == a.engine.prm.kv.stats()["used"]
        with pytest.raises(ValueError, match="steps is empty"):
            asyncio.run(a.score(Q, []))
    finally:
        a.close()
