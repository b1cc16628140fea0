"""Tiny random checkpoints saved by transformers (the oracle) for parity tests: head_dim 32
(2 query heads sharing 1 KV head), a size the CUDA kernels take too."""

from __future__ import annotations

import torch

FAMILIES = ["llama", "llama3-rope", "llama-linear-rope", "mistral", "qwen2", "qwen3"]
COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def make_model(family: str, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    if family.startswith("llama"):
        extra = dict(rope_theta=5000.0, tie_word_embeddings=family == "llama")
        if family == "llama3-rope":
            extra["rope_scaling"] = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                         high_freq_factor=4.0,
                                         original_max_position_embeddings=64)
        if family == "llama-linear-rope":
            extra["rope_scaling"] = dict(rope_type="linear", factor=2.0)
        cfg, cls = tf.LlamaConfig(**COMMON, **extra), tf.LlamaForCausalLM
    elif family == "mistral":
        cfg = tf.MistralConfig(**COMMON, sliding_window=None, rope_theta=10000.0)
        cls = tf.MistralForCausalLM
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**COMMON, rope_theta=10000.0, tie_word_embeddings=False)
        cls = tf.Qwen2ForCausalLM
    elif family == "qwen3":
        cfg = tf.Qwen3Config(**COMMON, head_dim=32, rope_theta=10000.0, tie_word_embeddings=False)
        cls = tf.Qwen3ForCausalLM
    else:
        raise ValueError(family)
    model = cls(cfg).eval()
    # Random init leaves some weights at exactly 0/1 (norms, biases): perturb them so that
    # every tensor matters to the comparison.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save(model, path) -> str:
    model.save_pretrained(path)
    return str(path)
