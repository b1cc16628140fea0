"""Qwen2: Llama layout with q/k/v biases (set from the config in ModelConfig.qkv_bias)."""

from ponder.models.llama import CausalLM


class Qwen2ForCausalLM(CausalLM):
    pass
