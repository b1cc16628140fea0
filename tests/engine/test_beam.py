"""Engine.beam_search (C++ beam bookkeeping + forked KV) against transformers generate."""

import itertools

import pytest
import torch

import ponder
from tests.models.tiny import make_model, save

EOS = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = make_model("qwen2", seed=7)  # some beams end with EOS, some run to the end
    with torch.no_grad():  # make EOS likely enough that beams finish inside the budget
        model.lm_head.weight[EOS] = model.lm_head.weight[EOS] * 2.5 + 0.3
    path = save(model, tmp_path_factory.mktemp("qwen2-beam"))
    return model, ponder.Engine(path, kv_blocks=128)


CASES = list(itertools.product([2, 4, 5], [0.0, 1.0, 2.0], [False, True, "never"]))


@pytest.mark.parametrize("width,length_penalty,early_stopping", CASES)
def test_matches_transformers(tiny, width, length_penalty, early_stopping):
    model, eng = tiny
    prompt = [7, 99, 14, 3, 56, 120, 8]
    num_return = min(2, width)
    beams = eng.beam_search(prompt, width=width, max_tokens=12, length_penalty=length_penalty,
                            early_stopping=early_stopping, num_return=num_return)
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), num_beams=width, do_sample=False,
                             max_new_tokens=12, length_penalty=length_penalty,
                             early_stopping=early_stopping, num_return_sequences=num_return,
                             eos_token_id=EOS, pad_token_id=0, output_scores=True,
                             return_dict_in_generate=True)
    assert len(beams) == len(ref.sequences) == num_return
    for b, seq, score in zip(beams, ref.sequences, ref.sequences_scores, strict=True):
        want = seq[len(prompt):].tolist()
        if EOS in want:  # HF pads finished beams after their EOS
            want = want[:want.index(EOS) + 1]
        assert b.token_ids == want
        assert b.score == pytest.approx(float(score), rel=1e-4, abs=1e-5)
    assert eng.kv.stats()["used"] == 0  # every beam's blocks were returned


@pytest.mark.parametrize("min_tokens", [5, 12])
def test_min_tokens_matches_transformers(tiny, min_tokens):
    model, eng = tiny
    prompt = [7, 99, 14, 3, 56, 120, 8]
    beams = eng.beam_search(prompt, width=4, max_tokens=12, num_return=4, min_tokens=min_tokens)
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), num_beams=4, do_sample=False,
                             max_new_tokens=12, min_new_tokens=min_tokens,
                             num_return_sequences=4, eos_token_id=EOS, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True)
    assert len(beams) == len(ref.sequences) == 4
    for b, seq, score in zip(beams, ref.sequences, ref.sequences_scores, strict=True):
        want = seq[len(prompt):].tolist()
        if EOS in want:
            want = want[:want.index(EOS) + 1]
        assert b.token_ids == want
        assert b.score == pytest.approx(float(score), rel=1e-4, abs=1e-5)
        assert EOS not in b.token_ids[:min_tokens]
    assert eng.kv.stats()["used"] == 0


def test_some_beams_end_with_eos(tiny):
    _, eng = tiny
    beams = eng.beam_search([7, 99, 14, 3, 56, 120, 8], width=4, max_tokens=12, num_return=4)
    assert len(beams) == 4
    assert any(b.token_ids[-1] == EOS for b in beams)


def test_bad_arguments(tiny):
    _, eng = tiny
    for kwargs, name in ((dict(width=0), "width"), (dict(max_tokens=0), "max_tokens"),
                         (dict(num_return=5), "num_return"),
                         (dict(early_stopping="sometimes"), "early_stopping"),
                         (dict(min_tokens=-1), "min_tokens")):
        args = dict(width=4, max_tokens=4) | kwargs
        with pytest.raises(ValueError, match=name):
            eng.beam_search([5, 6], **args)
    with pytest.raises(ValueError, match="empty"):
        eng.beam_search([], width=2, max_tokens=3)


def test_batches_with_other_requests(tiny):
    """A beam search is a client of the engine's scheduler: generations queued before it are
    served in the same forward passes, and neither result changes."""
    model, eng = tiny
    prompt = [7, 99, 14, 3, 56, 120, 8]
    alone = eng.beam_search(prompt, width=4, max_tokens=12, num_return=2)
    gen = ponder.Sampling(max_tokens=20, temperature=0.8, seed=9, ignore_eos=True)
    want = eng.generate([[5, 6, 7]], gen)[0].outputs[0].token_ids
    passes = eng.stats["forward_passes"]
    rid = eng.add_request([5, 6, 7], gen)
    beams = eng.beam_search(prompt, width=4, max_tokens=12, num_return=2)
    assert [(b.token_ids, b.score) for b in beams] == [(b.token_ids, b.score) for b in alone]
    shared = eng.stats["forward_passes"] - passes
    while eng.has_unfinished():
        eng.step()
    assert eng.output(rid).outputs[0].token_ids == want
    # The generation's 20 tokens rode along with the beams' passes (12 at most).
    assert eng.stats["forward_passes"] - passes == shared + max(0, 20 - shared)
    assert eng.kv.stats()["used"] == 0
