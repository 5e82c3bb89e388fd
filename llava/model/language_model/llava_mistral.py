"""LLaVA on Mistral (LLaVA-1.6-Mistral, ``liuhaotian/llava-v1.6-mistral-7b``): ``LlavaMistralConfig`` (model_type
"llava_mistral", as upstream) and ``LlavaMistralForCausalLM``, registered with the transformers Auto classes and in
:data:`llava.model.families.MODEL_FAMILIES`.

Train it with ``--version mistral_instruct`` (the template LLaVA-1.6-Mistral uses) from a Mistral language model or
a LLaVA-Mistral checkpoint.
"""

from __future__ import annotations

from transformers import MistralConfig, MistralForCausalLM, MistralModel

from ..families import ModelFamily, register_family
from ..llava_arch import LlavaMetaModel
from .causal_lm import LlavaCausalLM, init_llava_causal_lm

__all__ = ["LlavaMistralConfig", "LlavaMistralForCausalLM", "LlavaMistralModel"]


class LlavaMistralConfig(MistralConfig):
    model_type = "llava_mistral"


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig
    config: LlavaMistralConfig

    def __init__(self, config: MistralConfig):
        super().__init__(config)


class LlavaMistralForCausalLM(LlavaCausalLM, MistralForCausalLM):
    config_class = LlavaMistralConfig
    config: LlavaMistralConfig

    def __init__(self, config):
        init_llava_causal_lm(self, config, MistralForCausalLM, LlavaMistralModel)


register_family(
    ModelFamily(
        model_type=LlavaMistralConfig.model_type,
        config_class=LlavaMistralConfig,
        causal_lm_class=LlavaMistralForCausalLM,
        language_model_types=("mistral",),
        language_config_class=MistralConfig,
        language_causal_lm_class=MistralForCausalLM,
    )
)
