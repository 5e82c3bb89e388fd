"""LLaVA models: one causal LM per language-model family, as upstream exports them from here.

Importing this package registers every family (:data:`llava.model.families.MODEL_FAMILIES` and transformers' Auto
classes).
"""

from .language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from .language_model.llava_mistral import LlavaMistralConfig, LlavaMistralForCausalLM
from .language_model.llava_mpt import LlavaMptConfig, LlavaMptForCausalLM

__all__ = [
    "LlavaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaMistralConfig",
    "LlavaMistralForCausalLM",
    "LlavaMptConfig",
    "LlavaMptForCausalLM",
]
