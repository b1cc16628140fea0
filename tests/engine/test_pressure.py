"""KV pressure is scheduling, not failure: with a pool just large enough for one sequence,
seeded generations and every search strategy give the same tokens and trees as with a pool
that never runs short (preempted sequences are recomputed, searches run their steps in
waves, node KV is taken back and recomputed); a sequence that fills the pool finishes with
"length"; nothing leaks."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

import ponder

Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
BLOCK = 4
STEPS, STEP_TOKENS = 3, 8


def verifier(question, steps):
    """Scores from the text alone, so a tree is reproducible to the last bit."""
    return [int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little") / 2**32
            for s in steps]


SPECS = {
    "best_of_n": lambda seed: ponder.BestOfN(n=4, seed=seed, **_common()),
    "beam": lambda seed: ponder.BeamSearch(n=8, width=2, seed=seed, **_common()),
    "dvts": lambda seed: ponder.DVTS(n=4, width=2, seed=seed, **_common()),
    "particle_filter": lambda seed: ponder.ParticleFilter(n=4, seed=seed, **_common()),
    "particle_gibbs": lambda seed: ponder.ParticleGibbs(n=3, iterations=2, seed=seed,
                                                       **_common()),
    "astar": lambda seed: ponder.AStar(k=3, budget=4, seed=seed, **_common()),
    "mcts": lambda seed: ponder.MCTS(simulations=4, k=2, seed=seed, dirichlet=0.3, **_common()),
}


def _common():
    return dict(max_steps=STEPS, max_step_tokens=STEP_TOKENS)


def _tree(res):
    assert res.error is None
    nodes = json.loads(res.tree.to_json())["nodes"]
    assert len(nodes) > 1
    return [(n["parent"], n["text"], n["num_tokens"], round(n["score"], 9), n["answer"])
            for n in nodes]


def _tight_blocks(eng) -> int:
    """Blocks for the longest path of one search, and not one more."""
    longest = len(eng.tokenizer.encode_chat([{"role": "user", "content": Q}]))
    longest += STEPS * STEP_TOKENS + 1
    return -(-longest // BLOCK)


@pytest.fixture(scope="module")
def roomy(tiny_policy):
    return ponder.Engine(tiny_policy, kv_blocks=4096, block_size=BLOCK)


@pytest.mark.parametrize("name", list(SPECS))
def test_search_trees_equal_under_a_pool_for_one_sequence(tiny_policy, roomy, name):
    seeds = [11, 12]
    want = [_tree(roomy.search(Q, SPECS[name](s), prm=verifier)) for s in seeds]
    tight = ponder.Engine(tiny_policy, kv_blocks=_tight_blocks(roomy), block_size=BLOCK)
    ids = [tight.add_request(Q, SPECS[name](s), prm=verifier) for s in seeds]
    while tight.has_unfinished():
        tight.step()
    got = [_tree(tight.output(i)) for i in ids]
    assert got == want
    assert tight.stats["preemptions"] > 0  # the pool really was too small to run them at once
    assert tight.kv.stats()["used"] == 0 and not tight.kv.sequence_ids()


def test_generate_equal_under_a_pool_for_one_sequence(tiny_policy, roomy):
    prompts = [[5 + i, 17, 33, 8 * i + 1, 91, 4] * (i + 1) for i in range(4)]
    sp = ponder.Sampling(max_tokens=20, temperature=0.9, top_p=0.95, n=3, seed=5,
                         ignore_eos=True)
    want = [[c.token_ids for c in o.outputs] for o in roomy.generate(prompts, sp)]
    longest = max(len(p) for p in prompts) + 20
    tight = ponder.Engine(tiny_policy, kv_blocks=-(-longest // BLOCK), block_size=BLOCK,
                          max_num_batched_tokens=32)
    got = tight.generate(prompts, sp)
    assert len(got) == len(prompts)
    assert [[c.token_ids for c in o.outputs] for o in got] == want
    assert all(c.finish_reason == "length" and len(c.token_ids) == 20
               for o in got for c in o.outputs)
    assert tight.stats["preemptions"] > 0
    assert tight.kv.stats()["used"] == 0


def test_token_beam_search_equal_under_pressure(tiny_policy, roomy):
    prompt = [7, 300, 41, 9, 77, 1000, 5]
    want = roomy.beam_search(prompt, width=4, max_tokens=12)
    tight = ponder.Engine(tiny_policy, kv_blocks=9, block_size=BLOCK)
    got = tight.beam_search(prompt, width=4, max_tokens=12)
    assert [b.token_ids for b in got] == [b.token_ids for b in want]
    assert all(abs(b.score - w.score) < 1e-4 for b, w in zip(got, want, strict=True))
    assert tight.stats["preemptions"] > 0 and tight.kv.stats()["used"] == 0


def test_a_sequence_that_fills_the_pool_finishes_with_length(tiny_policy):
    eng = ponder.Engine(tiny_policy, kv_blocks=8, block_size=BLOCK)  # 32 tokens
    outs = eng.generate([[5, 6, 7], [9, 10, 11, 12, 13]],
                        ponder.Sampling(max_tokens=400, seed=1, ignore_eos=True))
    assert len(outs) == 2
    for o in outs:
        assert o.error is None and o.outputs[0].finish_reason == "length"
        assert len(o.prompt_token_ids) + len(o.outputs[0].token_ids) == 32
    assert eng.kv.stats()["used"] == 0
    # A search whose steps reach the pool's end: those steps end the solution ("length").
    eng = ponder.Engine(tiny_policy, kv_blocks=16, block_size=BLOCK)  # 64 tokens
    res = eng.search(Q[:20], ponder.BestOfN(n=2, max_steps=8, max_step_tokens=8, seed=3),
                     prm=verifier)
    assert res.error is None and len(res.candidates) == 2
    for c in res.candidates:
        node = json.loads(res.tree.to_json())["nodes"][c.node]
        assert node["finished"] and node["depth"] < 8  # ended by the pool, not max_steps
    assert eng.kv.stats()["used"] == 0


def test_a_prompt_that_can_never_fit_is_refused_at_the_door(tiny_policy):
    eng = ponder.Engine(tiny_policy, kv_blocks=8, block_size=BLOCK)
    with pytest.raises(ValueError, match="context"):
        eng.add_request(list(range(5, 40)), ponder.Sampling(max_tokens=4))
    with pytest.raises(ValueError, match="context"):
        eng.add_request("word " * 40, ponder.BestOfN(n=2))
    assert not eng.has_unfinished()


def test_copies_keep_their_order_when_a_source_is_reused_in_the_same_step(tiny_policy):
    """Under pressure a block copied early in a step can be freed and handed out again as a
    later copy's destination: the copies must apply in the order they were made."""
    eng = ponder.Engine(tiny_policy, kv_blocks=8, block_size=BLOCK)
    for i, (k, v) in enumerate(eng.runner.kv_caches):
        for b in range(8):
            k[b].fill_(100 * i + b)
            v[b].fill_(-(100 * i + b))
    eng.runner.copy_blocks([(1, 5), (7, 1), (5, 2)])
    for i, (k, v) in enumerate(eng.runner.kv_caches):
        got = [int(k[b].flatten()[0]) - 100 * i for b in range(8)]
        assert got == [0, 7, 1, 3, 4, 1, 6, 7]
        assert torch.equal(v, -k)


def test_abort_at_any_step_of_a_search_in_waves_frees_everything(tiny_policy):
    """max_num_seqs=1 runs a round's steps one after another (waves), so between steps some
    have finished (their KV kept for their nodes) and some wait: an abort at any step, or a
    failure, must free all of it."""
    eng = ponder.Engine(tiny_policy, kv_blocks=64, block_size=BLOCK, max_num_seqs=1)
    spec = ponder.BestOfN(n=3, max_steps=2, max_step_tokens=4, seed=1)
    total = 0
    for k in range(40):
        rid = eng.add_request(Q, spec, prm=verifier)
        for _ in range(k):
            eng.step()
        if not eng.has_unfinished():
            total = k
            eng.output(rid)
            break
        eng.abort(rid)
        assert eng.kv.stats()["used"] == 0 and not eng.kv.sequence_ids(), k
    assert total > 10  # the aborts above covered every step of a whole search

    def late_failure(question, steps):
        if len(steps) > 1:
            raise RuntimeError("late")
        return [0.5] * len(steps)

    with pytest.raises(RuntimeError, match="late"):
        eng.search(Q, spec, prm=late_failure)
    assert eng.kv.stats()["used"] == 0 and not eng.kv.sequence_ids()


@pytest.mark.parametrize("blocks,max_seqs", [(6, 256), (8, 2)])
def test_token_beam_search_on_the_smallest_pool(tiny_policy, roomy, blocks, max_seqs):
    """A beam whose logits arrived waits outside the scheduler, its KV given back under
    pressure: the beams neither preempt each other forever (6 blocks: the longest beam and
    one block more) nor wait on max_num_seqs behind idle ones."""
    prompt = [7, 300, 41, 9, 77, 1000, 5]
    want = roomy.beam_search(prompt, width=4, max_tokens=12, num_return=4)
    tight = ponder.Engine(tiny_policy, kv_blocks=blocks, block_size=BLOCK,
                          max_num_seqs=max_seqs)
    got = tight.beam_search(prompt, width=4, max_tokens=12, num_return=4)
    assert [b.token_ids for b in got] == [b.token_ids for b in want]
    assert all(abs(b.score - w.score) < 1e-4 for b, w in zip(got, want, strict=True))
    assert tight.kv.stats()["used"] == 0


def test_searches_whose_prompt_is_cached_whole(tiny_policy):
    """block_size 1: a second search on the same question finds its whole prompt in the
    prefix cache and starts without a forward pass, while a generation competes for the
    pool."""
    probe = ponder.Engine(tiny_policy, kv_blocks=64, block_size=1)
    n = len(probe.tokenizer.encode_chat([{"role": "user", "content": Q}]))
    eng = ponder.Engine(tiny_policy, kv_blocks=n + 5, block_size=1)
    spec = ponder.BestOfN(n=2, max_steps=1, max_step_tokens=4, seed=2)
    want = _tree(probe.search(Q, spec, prm=verifier))
    ids = [eng.add_request(Q, spec, prm=verifier) for _ in range(2)]
    gen = eng.add_request(list(range(5, 15)), ponder.Sampling(max_tokens=10, seed=1))
    while eng.has_unfinished():
        eng.step()
    assert [_tree(eng.output(i)) for i in ids] == [want, want]
    assert eng.output(gen).error is None
    assert eng.kv.stats()["used"] == 0


def test_stop_strings_read_ids_past_the_tokenizer(tiny_policy, tmp_path):
    """An LM head padded past the tokenizer's vocabulary (as Qwen2.5's is): a sampled id
    there adds no text, and the stop matcher reads it instead of failing the request."""
    import shutil

    from safetensors.torch import load_file, save_file

    for name in os.listdir(tiny_policy):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(tiny_policy, name), tmp_path / name)
    tensors = {}
    for name in os.listdir(tiny_policy):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(tiny_policy, name)))
    pad = 64
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["vocab_size"] += pad
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    # Padded LM-head rows of +50 or -50 everywhere: with one of the two signs (whichever
    # agrees with the hidden states' sum) the padded ids win every greedy pick.
    for sign in (1.0, -1.0):
        padded = {}
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            w = tensors[key]
            extra = torch.zeros(pad, w.shape[1]) if key.startswith("model") else \
                torch.full((pad, w.shape[1]), 50.0 * sign)
            padded[key] = torch.cat([w, extra]).contiguous()
        save_file({**tensors, **padded}, str(tmp_path / "model.safetensors"),
                  metadata={"format": "pt"})
        eng = ponder.Engine(str(tmp_path), kv_blocks=64)
        assert eng.config.vocab_size == eng.tokenizer.vocab_size + pad
        out = eng.generate(["Say hi."], ponder.Sampling(max_tokens=5, temperature=0.0,
                                                        stop=["\n\n"]))[0].outputs[0]
        if all(t >= eng.tokenizer.vocab_size for t in out.token_ids):
            break
    else:
        raise AssertionError("no sign made the padded ids win")
    assert out.finish_reason == "length" and out.text == ""
