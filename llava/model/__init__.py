"""LLaVA models (upstream exports `LlavaLlamaForCausalLM` and `LlavaConfig` from here)."""

from .language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

__all__ = ["LlavaConfig", "LlavaLlamaForCausalLM"]
