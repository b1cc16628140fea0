"""BeamSearch against its oracle, transformers' model.generate(num_beams=...).

A driver runs a tiny random Llama on every running beam's full token sequence, feeds the
log-probs to the core state machine and forks the beams it returns; the finished beams, their
scores and the number of steps must equal what generate() returns for the same model and prompt.
The lm_head is scaled (peaked distributions) and its eos row pushed along the mean hidden state,
so beams end on eos within the budget and the finished-hypothesis paths run; vocab 96 makes
torch.topk take its nth_element path, vocab 320 its partial_sort path.
"""

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
)

from ponder._core import BeamSearch  # noqa: E402

EOS = 3
PROMPTS = ([5, 17, 42, 8], [1], [9, 9, 9, 30, 2])


def make_model(vocab_size, eos_boost, seed=0, hidden_size=32):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
                         pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
        ctx = torch.randint(0, vocab_size, (8, 10), generator=torch.Generator().manual_seed(seed))
        h = model(ctx, output_hidden_states=True).hidden_states[-1].reshape(-1, hidden_size).mean(0)
        model.lm_head.weight[EOS] += eos_boost * h / h.dot(h)  # eos logit up by ~eos_boost
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matmuls: threads only add synchronization, which stalls on a shared machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models():
    return {96: make_model(96, 6.0), 320: make_model(320, 8.0)}


def hf_beam_search(model, prompt, width, max_new_tokens, length_penalty, early_stopping,
                   eos_token_ids, num_return, processor=None):
    config = GenerationConfig(num_beams=width, do_sample=False, max_new_tokens=max_new_tokens,
                              length_penalty=length_penalty, early_stopping=early_stopping,
                              num_return_sequences=num_return, eos_token_id=eos_token_ids,
                              pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    ids = torch.tensor([prompt])
    extra = {"logits_processor": LogitsProcessorList([processor])} if processor else {}
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                             **extra)
    beams = []
    for i in range(num_return):
        n = int((out.beam_indices[i] >= 0).sum())
        seq = out.sequences[i, len(prompt):]
        # HF pads with `pad_token_id or eos_token_id[0]`; pad 0 is falsy, so with eos.
        assert (seq[n:] == (eos_token_ids[0] if eos_token_ids else -1)).all()
        beams.append((seq[:n].tolist(), float(out.sequences_scores[i])))
    return beams, len(out.scores)


def ponder_beam_search(model, prompt, width, max_new_tokens, length_penalty, early_stopping,
                       eos_token_ids, num_return, processor=None):
    st = BeamSearch(width, max_new_tokens, length_penalty=length_penalty,
                    early_stopping=early_stopping, eos_token_ids=eos_token_ids,
                    num_return=num_return)
    beams = [list(prompt)]
    while not st.done:
        assert st.num_running == len(beams)
        with torch.no_grad():
            logits = model(torch.tensor(beams)).logits[:, -1]
        logprobs = torch.log_softmax(logits.float(), -1)
        if processor is not None:
            logprobs = processor(None, logprobs)
        parents, tokens = st.step(logprobs)
        assert parents.dtype == np.int64 and tokens.dtype == np.int64
        beams = [beams[p] + [t] for p, t in zip(parents.tolist(), tokens.tolist(), strict=True)]
    assert beams == [] and st.num_running == 0
    return st.finalize(), st.num_steps


def assert_same(ours, theirs):
    (beams, steps), (ref_beams, ref_steps) = ours, theirs
    assert [t for t, _ in beams] == [t for t, _ in ref_beams]
    for (_, score), (_, ref) in zip(beams, ref_beams, strict=True):
        assert score == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert steps == ref_steps


def run_both(model, *args, **kwargs):
    return (ponder_beam_search(model, *args, **kwargs), hf_beam_search(model, *args, **kwargs))


@pytest.mark.parametrize("vocab", [96, 320])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("width,num_return", [(2, 1), (4, 4), (5, 2)])
def test_matches_hf(models, vocab, width, num_return, length_penalty, early_stopping):
    prompt = PROMPTS[(width + int(length_penalty)) % len(PROMPTS)]
    assert_same(*run_both(models[vocab], prompt, width, 10, length_penalty, early_stopping,
                          [EOS], num_return))


def test_cases_cover_eos_and_max_length(models):
    # The parity grid above only means something if both ways of finishing occur in it.
    ends = set()
    for vocab in (96, 320):
        for lp in (0.0, 2.0):
            (beams, _), _ = run_both(models[vocab], PROMPTS[0], 4, 10, lp, False, [EOS], 4)
            ends |= {"eos" if t[-1] == EOS else "max" if len(t) == 10 else "?" for t, _ in beams}
    assert ends == {"eos", "max"}


@pytest.mark.parametrize("early_stopping", [False, "never"])
def test_no_eos_and_fractional_penalty(models, early_stopping):
    for prompt in PROMPTS[:2]:
        assert_same(*run_both(models[96], prompt, 3, 7, 0.7, early_stopping, None, 2))


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_two_eos_tokens(models, early_stopping):
    model = models[320]
    with torch.no_grad():
        second = int(model(torch.tensor([PROMPTS[0]])).logits[0, -1].argsort()[-4])
    for lp in (-0.5, 1.0):
        assert_same(*run_both(model, PROMPTS[0], 3, 9, lp, early_stopping, [EOS, second], 3))
    # A repeated id still counts towards the candidates ranked (HF does not deduplicate).
    assert_same(*run_both(model, PROMPTS[1], 2, 9, 1.0, early_stopping, [EOS, EOS], 2))


def test_one_new_token(models):
    assert_same(*run_both(models[96], PROMPTS[0], 4, 1, 1.0, False, [EOS], 4))


class RoundLogProbs(LogitsProcessor):
    """Rounds log-probs to multiples of 1/q: accumulated scores then tie all over the place."""

    def __init__(self, q):
        self.q = q

    def __call__(self, input_ids, scores):
        return torch.round(scores * self.q) / self.q


@pytest.mark.parametrize("vocab", [96, 320])
@pytest.mark.parametrize("q", [1.0, 4.0])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_ties_break_like_torch_topk(models, vocab, q, early_stopping):
    for width in (2, 5):
        for lp in (0.0, 1.0):
            assert_same(*run_both(models[vocab], PROMPTS[0], width, 8, lp, early_stopping, [EOS],
                                  width, processor=RoundLogProbs(q)))


def test_large_vocab_ties():
    # 40k x 6 beams: the streaming partial_sort path on many equal scores.
    model = make_model(40000, 0.0, hidden_size=16)
    assert_same(*run_both(model, PROMPTS[0], 6, 5, 1.0, False, [EOS], 2,
                          processor=RoundLogProbs(2.0)))


def test_wrong_length_penalty_breaks_equality(models):
    # The comparison has teeth: a driver with another length penalty gets other scores.
    (beams, _), (ref, _) = (ponder_beam_search(models[96], PROMPTS[0], 4, 10, 1.5, False, [EOS], 4),
                            hf_beam_search(models[96], PROMPTS[0], 4, 10, 1.0, False, [EOS], 4))
    assert any(s != pytest.approx(r, rel=1e-5) or t != u
               for (t, s), (u, r) in zip(beams, ref, strict=True))


def test_score_is_penalized_sum_of_logprobs(models):
    model, prompt, lp = models[320], PROMPTS[0], 2.0
    (beams, _), _ = run_both(model, prompt, 4, 10, lp, False, [EOS], 4)
    for tokens, score in beams:
        seq = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(seq).logits[0, len(prompt) - 1:-1].float(), -1)
        total = logprobs.gather(1, torch.tensor(tokens)[:, None]).sum().item()
        assert score == pytest.approx(total / len(tokens) ** lp, rel=1e-4)


def test_state_and_shapes():
    st = BeamSearch(3, 2, eos_token_ids=7)
    assert (st.width, st.max_new_tokens, st.num_return, st.early_stopping) == (3, 2, 1, "false")
    assert st.eos_token_ids == [7] and st.num_candidates == 6
    assert st.num_running == 1 and not st.done and st.num_steps == 0
    logprobs = torch.log_softmax(torch.arange(10, dtype=torch.float32), -1)
    parents, tokens = st.step(logprobs[None])
    assert parents.tolist() == [0, 0, 0] and tokens.tolist() == [9, 8, 6]  # 7 is eos
    assert st.num_finished == 1 and st.num_running == 3
    parents, tokens = st.step(logprobs.expand(3, 10).contiguous())
    assert st.done and parents.shape == (0,) and tokens.shape == (0,)
    beams = st.finalize()
    assert [t for t, _ in beams] == [[9, 9]]
    assert beams[0][1] == pytest.approx(2 * logprobs[9].item() / 2)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(width=0, max_new_tokens=4), ValueError, "width"),
    (dict(width=2, max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(width=2, max_new_tokens=4, num_return=3), ValueError, "num_return"),
    (dict(width=2, max_new_tokens=4, num_return=0), ValueError, "num_return"),
    (dict(width=2, max_new_tokens=4, length_penalty=math.nan), ValueError, "length_penalty"),
    (dict(width=2, max_new_tokens=4, early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(width=2, max_new_tokens=4, early_stopping=1), TypeError, "early_stopping"),
    (dict(width=2, max_new_tokens=4, early_stopping=None), TypeError, "early_stopping"),
    (dict(width=2, max_new_tokens=4, eos_token_ids=[-1]), ValueError, "eos_token_ids"),
    (dict(width=2, max_new_tokens=4, eos_token_ids="2"), TypeError, "eos_token_ids"),
    (dict(width=2, max_new_tokens=4, eos_token_ids=[1.0]), TypeError, "eos_token_ids"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BeamSearch(**kwargs)


def test_bad_logprobs():
    st = BeamSearch(2, 3)
    row = torch.log_softmax(torch.randn(1, 8), -1)
    with pytest.raises(TypeError, match="logprobs must be float32"):
        st.step(row.double())
    with pytest.raises(ValueError, match="logprobs must have 2 dimensions"):
        st.step(row[0])
    with pytest.raises(ValueError, match="num_running"):
        st.step(row.expand(2, 8).contiguous())
    with pytest.raises(ValueError, match="contiguous"):
        st.step(torch.log_softmax(torch.randn(1, 16), -1)[:, ::2])
    with pytest.raises(ValueError, match="NaN"):
        st.step(torch.full((1, 8), math.nan))
    with pytest.raises(ValueError, match="candidates"):
        st.step(row[:, :1].contiguous())  # 2 beams x 1 token < 4 candidates
    with pytest.raises(ValueError, match="before the search is done"):
        st.finalize()
    assert st.num_steps == 0  # failed steps change nothing
    st.step(row)
    with pytest.raises(ValueError, match="vocab_size"):
        st.step(torch.zeros(2, 9))
    st.step(row.expand(2, 8).contiguous())
    st.step(row.expand(2, 8).contiguous())
    assert st.done and len(st.finalize()) == 1
    with pytest.raises(ValueError, match="after the search is done"):
        st.step(row.expand(2, 8).contiguous())
