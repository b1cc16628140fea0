"""`ponder.models.gguf` against transformers' own GGUF loader as the oracle."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "1234567890 3.14159 -42 1e-5 2026-11-29",
    "a   b\t\tc     d      ",
    "  leading spaces and trailing ones   ",
    "line1\nline2\r\n\n\nline3\n",
    "naïve café — Ωmega, 日本語のテキスト, Привет 😀👍🏽🇫🇷",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <|im_end|>",
    "def f(x):\n    return x ** 2  # square\n",
    "",
]


@pytest.fixture(scope="session")
def ckpt(gguf_mod, smollm2_gguf):
    return gguf_mod.read_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def hf_model(smollm2_hf):
    # transformers' own load of the GGUF, saved once by the shared fixture (tests/conftest.py)
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf)
    return model.eval()


@pytest.fixture(scope="session")
def hf_tokenizer(smollm2_hf):
    return transformers.AutoTokenizer.from_pretrained(smollm2_hf)


@pytest.fixture(scope="session")
def converted(gguf_mod, smollm2_gguf, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("smollm2-hf")
    gguf_mod.convert(smollm2_gguf, out_dir)
    return out_dir


def test_tensors_equal_transformers(ckpt, hf_model):
    state = hf_model.state_dict()
    assert ckpt.config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in ckpt.tensors
    assert set(ckpt.tensors) == set(state) - {"lm_head.weight"}
    for name, tensor in ckpt.tensors.items():
        assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor, state[name]), name
    assert torch.equal(ckpt.tensors["model.embed_tokens.weight"], state["lm_head.weight"])


def test_qk_rows_unpermuted(gguf_mod, smollm2_gguf, ckpt):
    # Guard against an oracle bug that would hide a missing permute: the file's raw q rows
    # must differ from the HF ones, and be their llama.cpp permutation.
    import gguf

    reader = gguf.GGUFReader(smollm2_gguf)
    raw = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    raw = torch.from_numpy(gguf.quants.dequantize(raw.data, raw.tensor_type).copy())
    q = ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]
    heads, head_dim = ckpt.config["num_attention_heads"], ckpt.config["head_dim"]
    assert not torch.equal(raw, q)
    permuted = q.reshape(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(q.shape)
    assert torch.equal(permuted, raw)


def test_config_matches_transformers(ckpt, hf_model):
    cfg, ref = ckpt.config, hf_model.config
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    for key in [
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
        "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
    ]:
        assert cfg[key] == getattr(ref, key), key
    assert cfg["rope_theta"] == 100000.0
    assert cfg["rope_parameters"]["rope_theta"] == ref.rope_parameters["rope_theta"] == 100000.0
    assert cfg["rope_parameters"]["rope_type"] == ref.rope_parameters["rope_type"] == "default"
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)


def test_converted_config_reads_rope_theta(converted):
    config = transformers.AutoConfig.from_pretrained(converted)
    assert config.rope_parameters["rope_theta"] == 100000.0


def test_tokenizer_encodes_like_transformers(ckpt, hf_tokenizer):
    mine = tokenizers.Tokenizer.from_str(ckpt.tokenizer_json)
    for text in TEXTS:
        for special in (True, False):
            ids = mine.encode(text, add_special_tokens=special).ids
            assert ids == hf_tokenizer(text, add_special_tokens=special)["input_ids"], text
        for skip in (True, False):
            assert mine.decode(ids, skip_special_tokens=skip) == hf_tokenizer.decode(
                ids, skip_special_tokens=skip
            ), text
        assert mine.decode(ids, skip_special_tokens=False) == text  # byte-level is lossless
    im_start = mine.encode("<|im_start|>", add_special_tokens=False).ids
    assert im_start == [1]


def test_tokenizer_config_and_special_ids(ckpt, hf_tokenizer, hf_model):
    tc, gc = ckpt.tokenizer_config, ckpt.generation_config
    assert tc["chat_template"] == hf_tokenizer.chat_template
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert tc[name] == getattr(hf_tokenizer, name), name
    assert tc["add_bos_token"] is False and tc["add_eos_token"] is False
    assert tc["model_max_length"] == 8192
    ref = hf_model.generation_config
    assert gc == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert (gc["bos_token_id"], gc["eos_token_id"]) == (ref.bos_token_id, ref.eos_token_id)
    assert hf_tokenizer.convert_tokens_to_ids(tc["eos_token"]) == gc["eos_token_id"]


def test_convert_loads_in_transformers(converted, hf_model, hf_tokenizer):
    assert sorted(p.name for p in converted.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    ]
    model = transformers.AutoModelForCausalLM.from_pretrained(converted).eval()
    tok = transformers.AutoTokenizer.from_pretrained(converted)
    messages = [{"role": "user", "content": "What is 7 times 8?"}]
    prompt = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    ids = torch.tensor([hf_tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        expected = hf_model(ids).logits
        actual = model(ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    for text in TEXTS:
        assert tok(text)["input_ids"] == hf_tokenizer(text)["input_ids"], text
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == hf_tokenizer.decode(ids), text
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


SPM_TEXTS = [
    "hello world",
    " the  thing\n12!",
    "Hi 😀 <think>x</s> done",
    "   ",
    "THE END.",
    "",
]


def test_sentencepiece_tokenizer_and_untied_gqa_tensors(gguf_mod, tiny_gguf):
    path = tiny_gguf(num_heads=4, num_kv_heads=2, tied=False)
    ckpt = gguf_mod.read_gguf(path)
    ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    mine = tokenizers.Tokenizer.from_str(ckpt.tokenizer_json)
    for text in SPM_TEXTS:
        for special in (True, False):
            ids = mine.encode(text, add_special_tokens=special).ids
            assert ids == ref_tok(text, add_special_tokens=special)["input_ids"], text
            for skip in (True, False):
                assert mine.decode(ids, skip_special_tokens=skip) == ref_tok.decode(
                    ids, skip_special_tokens=skip
                ), text
    assert ckpt.tokenizer_config["add_bos_token"] is True  # SentencePiece default

    ref = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    state = ref.state_dict()
    assert ckpt.config["tie_word_embeddings"] is False
    assert set(ckpt.tensors) == set(state)
    for name, tensor in ckpt.tensors.items():
        assert torch.equal(tensor, state[name]), name
    assert ckpt.config["rope_parameters"]["rope_theta"] == 5e5


def test_missing_file(gguf_mod, tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        gguf_mod.read_gguf(missing)
    with pytest.raises(FileNotFoundError):
        gguf_mod.convert(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_llama_architecture(gguf_mod, tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="architecture 'gpt2'"):
        gguf_mod.read_gguf(path)


def test_unsupported_contents(gguf_mod, tiny_gguf):
    with pytest.raises(NotImplementedError, match="tokenizer model 'bert'"):
        gguf_mod.read_gguf(tiny_gguf("bert.gguf", tokenizer_model="bert"))
    with pytest.raises(NotImplementedError, match="rope_freqs"):
        gguf_mod.read_gguf(tiny_gguf("rf.gguf", extra_tensors={"rope_freqs.weight": (2,)}))
    moe = {"blk.0.ffn_gate_exps.weight": (2, 4, 4)}
    with pytest.raises(ValueError, match="ffn_gate_exps"):
        gguf_mod.read_gguf(tiny_gguf("moe.gguf", extra_tensors=moe))
