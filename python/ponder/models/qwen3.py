"""Qwen3: Llama layout with a per-head RMSNorm on q and k before rotary (ModelConfig.qk_norm)."""

from ponder.models.llama import CausalLM


class Qwen3ForCausalLM(CausalLM):
    pass
