"""Tokenizer and chat templates against transformers (SmolLM2's tokenizer)."""

import pytest

from ponder.models.loader import load_checkpoint
from ponder.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = ["Hello world", "  leading spaces and\ttabs\n\nnew paragraphs", "3*7 = 21; 1234567",
         "naïve café — ünïcödé ✓ 🤖🙂", "<|im_start|>user\nhi<|im_end|>", ""]


@pytest.fixture(scope="module")
def pair(smollm2_hf):
    from transformers import AutoTokenizer

    ck = load_checkpoint(smollm2_hf)
    ours = Tokenizer(ck.tokenizer_json, ck.tokenizer_config, ck.generation_config,
                     ck.config.eos_token_ids)
    return ours, AutoTokenizer.from_pretrained(smollm2_hf)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match(pair, text):
    ours, hf = pair
    for special in (True, False):
        ids = ours.encode(text, add_special_tokens=special)
        assert ids == hf.encode(text, add_special_tokens=special)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
]


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches(pair, chat, gen):
    ours, hf = pair
    want = hf.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
    assert ours.apply_chat_template(chat, add_generation_prompt=gen) == want
    assert ours.encode_chat(chat, add_generation_prompt=gen) == hf.apply_chat_template(
        chat, add_generation_prompt=gen, tokenize=True, return_dict=False)


def test_continue_final_message(pair):
    ours, hf = pair
    chat = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"}]
    want = hf.apply_chat_template(chat, continue_final_message=True,
                                  add_generation_prompt=False, tokenize=False)
    got = ours.apply_chat_template(chat, add_generation_prompt=False, continue_final_message=True)
    assert got == want and got.endswith("1, 2,")


def test_raise_exception_in_template(pair):
    ours, _ = pair
    t = Tokenizer.__new__(Tokenizer)
    t.__dict__.update(ours.__dict__)
    t.chat_template, t._compiled = "{{ raise_exception('no system role') }}", None
    with pytest.raises(Exception, match="no system role"):
        t.apply_chat_template([{"role": "user", "content": "x"}])


def test_eos_from_generation_config(pair):
    ours, hf = pair
    assert ours.eos_token_ids and hf.eos_token_id in ours.eos_token_ids


def test_incremental_detokenizer_never_splits_characters(pair):
    ours, _ = pair
    text = "Emoji 🤖🙂 and accents: naïve café, ünïcödé. Done."
    ids = ours.encode(text, add_special_tokens=False)
    det = IncrementalDetokenizer(ours)
    pieces = [det.push([t]) for t in ids]
    pieces.append(det.flush())
    assert "".join(pieces) == ours.decode(ids)
    assert all("\ufffd" not in p for p in pieces)
