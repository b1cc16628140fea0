"""Engine.generate against transformers, seeded sampling, batching, preemption, streaming."""

import pytest
import torch

import ponder
from tests.models.tiny import FAMILIES, make_model, save

PROMPTS = [[5, 17, 33, 8, 91], [44, 3, 120, 7, 7, 61, 150, 12, 9, 30, 31, 4], [77]]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    model = make_model(request.param)
    return model, save(model, tmp_path_factory.mktemp(request.param))


def hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_matches_transformers(tiny):
    model, path = tiny
    eng = ponder.Engine(path, kv_blocks=64)
    outs = eng.generate(PROMPTS, ponder.Sampling(max_tokens=20, temperature=0.0,
                                                 ignore_eos=True))
    assert len(outs) == len(PROMPTS)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(model, prompt, 20)
        assert out.outputs[0].finish_reason == "length"
    assert eng.kv.stats()["used"] == 0


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = make_model("llama")
    return model, save(model, tmp_path_factory.mktemp("llama"))


def _sample(eng, prompts, sampling):
    return [o.outputs for o in eng.generate(prompts, sampling)]


def test_seeded_sampling_is_batch_invariant(llama):
    _, path = llama
    sp = ponder.Sampling(max_tokens=24, temperature=0.9, top_p=0.9, top_k=40, seed=1234,
                         ignore_eos=True)
    alone = _sample(ponder.Engine(path, kv_blocks=64), [PROMPTS[1]], sp)[0][0].token_ids
    others = [ponder.Sampling(max_tokens=30, temperature=1.0, seed=s, ignore_eos=True)
              for s in range(7)]
    eng = ponder.Engine(path, kv_blocks=64)
    rids = [eng.add_request(PROMPTS[i % 3] * (i + 1), others[i]) for i in range(4)]
    rid = eng.add_request(PROMPTS[1], sp)
    rids += [eng.add_request(PROMPTS[i % 3], others[i]) for i in range(4, 7)]
    while eng.has_unfinished():
        eng.step()
    assert eng.output(rid).outputs[0].token_ids == alone
    # Under a pool so small that requests are preempted and recomputed: same tokens.
    tight = ponder.Engine(path, kv_blocks=6, max_num_batched_tokens=64)
    rids = [tight.add_request(PROMPTS[1], sp)] + [tight.add_request(PROMPTS[0], o)
                                                  for o in others[:3]]
    while tight.has_unfinished():
        tight.step()
    assert tight.stats["preemptions"] > 0
    assert tight.output(rids[0]).outputs[0].token_ids == alone
    assert tight.kv.stats()["used"] == 0
    # A different seed gives a different sample.
    sp2 = ponder.Sampling(**{**sp.__dict__, "seed": 99})
    assert _sample(ponder.Engine(path, kv_blocks=64), [PROMPTS[1]], sp2)[0][0].token_ids != alone


def test_n_completions_share_the_prompt(llama):
    _, path = llama
    eng = ponder.Engine(path, kv_blocks=64)
    prompt = list(range(3, 3 + 40))  # 40 tokens: 2 full blocks + a partial one
    outs = eng.generate([prompt], ponder.Sampling(max_tokens=5, temperature=1.0, n=8, seed=3,
                                                  ignore_eos=True))[0].outputs
    assert len(outs) == 8 and len({tuple(o.token_ids) for o in outs}) > 1
    # 8 completions of 45 tokens would need 8 x 3 = 24 blocks unshared.
    assert eng.kv.stats()["peak_used"] <= 2 + 8 * 2
    # Each completion equals the same (seed, index) drawn alone: the fork changes nothing.
    single = ponder.Engine(path, kv_blocks=64).generate(
        [prompt], ponder.Sampling(max_tokens=5, temperature=1.0, n=8, seed=3,
                                  ignore_eos=True))[0].outputs
    assert [o.token_ids for o in outs] == [o.token_ids for o in single]


def test_prefix_cache_across_requests(llama):
    _, path = llama
    eng = ponder.Engine(path, kv_blocks=64)
    prompt = list(range(3, 3 + 50))
    a = eng.generate([prompt], ponder.Sampling(max_tokens=4, temperature=0.0))[0]
    before = eng.stats["tokens_prefilled"]
    b = eng.generate([prompt], ponder.Sampling(max_tokens=4, temperature=0.0))[0]
    assert eng.kv.stats()["prefix_hit_tokens"] == 48
    assert eng.stats["tokens_prefilled"] - before == 2  # 48 of 50 prompt tokens were cached
    assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_stop_strings_tokens_and_streaming(smollm2_gguf):
    eng = ponder.Engine(smollm2_gguf, kv_blocks=128)
    sp = ponder.Sampling(max_tokens=40, temperature=0.0)
    full = eng.generate(["Count from 1 to 20, separated by commas."], sp)[0].outputs[0]
    assert "5" in full.text
    stop = ponder.Sampling(max_tokens=40, temperature=0.0, stop=["5"])
    cut = eng.generate(["Count from 1 to 20, separated by commas."], stop)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index("5")]
    # Streaming: the deltas add up to the final text.
    rid = eng.add_request("Write one sentence about the sea.", sp)
    deltas = []
    while eng.has_unfinished():
        deltas += [e.text_delta for e in eng.step() if e.request_id == rid]
    assert "".join(deltas) == eng.output(rid).outputs[0].text
    ids = full.token_ids
    i = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    tok_stop = ponder.Sampling(max_tokens=40, temperature=0.0, stop_token_ids=[full.token_ids[i]])
    out = eng.generate(["Count from 1 to 20, separated by commas."], tok_stop)[0].outputs[0]
    assert out.token_ids == full.token_ids[:i + 1] and out.finish_reason == "stop"


def test_abort_returns_every_block(llama):
    _, path = llama
    eng = ponder.Engine(path, kv_blocks=32)
    rids = [eng.add_request(p, ponder.Sampling(max_tokens=50, n=2, ignore_eos=True))
            for p in PROMPTS]
    for _ in range(3):
        eng.step()
    assert eng.kv.stats()["used"] > 0
    for r in rids:
        eng.abort(r)
    assert eng.kv.stats()["used"] == 0 and not eng.has_unfinished()
    with pytest.raises(ValueError, match="request_id"):
        eng.abort(rids[0])


def test_bad_inputs(llama):
    _, path = llama
    eng = ponder.Engine(path, kv_blocks=8)
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[]])
    with pytest.raises(ValueError, match="context"):
        eng.generate([[5] * 200])  # 8 blocks x 16 = 128 tokens
    with pytest.raises(ValueError, match="no tokenizer"):
        eng.generate(["text"])
    with pytest.raises(ValueError, match="token ids must be in"):
        eng.generate([[5, 100000]])
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=2),
                dict(max_tokens=0), dict(n=0), dict(stop=[""]), dict(logprobs=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ponder.Sampling(**bad)
    with pytest.raises(TypeError, match="sampling"):
        eng.add_request([5], sampling={"max_tokens": 3})
    with pytest.raises(ValueError, match="dtype"):
        ponder.Engine(path, dtype="int8")
    with pytest.raises(FileNotFoundError, match="'x' does not exist"):
        ponder.Engine(path, prm="x")
    assert eng.kv.stats()["used"] == 0
