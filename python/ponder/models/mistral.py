"""Mistral: the Llama architecture (sliding-window configs are rejected in config.py)."""

from ponder.models.llama import CausalLM


class MistralForCausalLM(CausalLM):
    pass
