"""Fixtures for the checkpoint reader tests: tiny GGUF files written with the gguf package."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def gguf_mod():
    from ponder.models import gguf

    return gguf


# A tiny SentencePiece vocabulary: control, byte-fallback, normal and user-defined tokens.
_SPM_PIECES = [
    "\u2581", *"abcdefghijklmnopqrstuvwxyzTH0123456789.,!?",
    "\u2581t", "he", "\u2581the", "\u2581a", "in", "\u2581in", "er", "ing", "\u2581th", "ll", "lo",
    "llo", "hel", "hello", "\u2581hello", "\u2581w", "or", "\u2581wor", "ld", "\u2581world",
    "\u2581\u2581", "\u2581\u2581\u2581\u2581", "\u25811", "12",
]


def write_tiny_gguf(
    path,
    arch="llama",
    tokenizer_model="llama",
    tied=False,
    num_heads=4,
    num_kv_heads=2,
    extra_tensors=(),
):
    """Write a one-layer random-weight GGUF with a SentencePiece vocabulary to `path`."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + _SPM_PIECES
    tokens.append("<think>")
    token_types = [2, 3, 3] + [6] * 256 + [1] * len(_SPM_PIECES) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(_SPM_PIECES) + 1)]
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    hidden, ffn, vocab = 16, 32, len(tokens)
    head_dim = hidden // num_heads
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(num_heads)
    writer.add_head_count_kv(num_kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(5e5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(vocab)
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (vocab, hidden),
        "output_norm.weight": (hidden,),
        "blk.0.attn_norm.weight": (hidden,),
        "blk.0.ffn_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (num_heads * head_dim, hidden),
        "blk.0.attn_k.weight": (num_kv_heads * head_dim, hidden),
        "blk.0.attn_v.weight": (num_kv_heads * head_dim, hidden),
        "blk.0.attn_output.weight": (hidden, num_heads * head_dim),
        "blk.0.ffn_gate.weight": (ffn, hidden),
        "blk.0.ffn_up.weight": (ffn, hidden),
        "blk.0.ffn_down.weight": (hidden, ffn),
    }
    if not tied:
        shapes["output.weight"] = (vocab, hidden)
    shapes.update(dict(extra_tensors))
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path):
    """Factory: `tiny_gguf(**kwargs)` writes a tiny GGUF under tmp_path and returns its path."""

    def make(name="tiny.gguf", **kwargs):
        return write_tiny_gguf(tmp_path / name, **kwargs)

    return make
