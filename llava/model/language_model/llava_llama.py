"""LLaVA on Llama (Vicuna): ``LlavaConfig`` (model_type "llava_llama") and ``LlavaLlamaForCausalLM``, registered with
the transformers Auto classes and in :data:`llava.model.families.MODEL_FAMILIES`.

The released checkpoints (``liuhaotian/llava-v1.5-7b``, ...) say ``"model_type": "llava"`` in their config.json, a
name that transformers 5 gives to its own, differently laid out ``LlavaConfig`` (upstream #1622 shows the warning
users saw). That registration is left alone; :func:`llava.model.families.load_checkpoint_config` reads such a config
itself and builds this package's ``LlavaConfig`` from it, as upstream's ``LlavaLlamaForCausalLM.from_pretrained``
did.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from ..families import (
    ModelFamily,
    is_llava_config,
    llava_config_from_dict,
    load_checkpoint_config,
    register_family,
)
from ..llava_arch import LlavaMetaModel
from .causal_lm import LlavaCausalLM, init_llava_causal_lm

# Upstream's own checkpoints: "llava" (what the releases' transformers 4.31 wrote) and "llava_llama" (ours, and
# upstream's since). Both hold a Llama's fields at the top level plus the `mm_*` fields.
UPSTREAM_LLAVA_MODEL_TYPES = ("llava", "llava_llama")

__all__ = [
    "LlavaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaLlamaModel",
    "UPSTREAM_LLAVA_MODEL_TYPES",
    "is_llava_config",
    "llava_config_from_dict",
    "load_checkpoint_config",
]


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig
    config: LlavaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)


class LlavaLlamaForCausalLM(LlavaCausalLM, LlamaForCausalLM):
    config_class = LlavaConfig
    config: LlavaConfig

    def __init__(self, config):
        init_llava_causal_lm(self, config, LlamaForCausalLM, LlavaLlamaModel)


register_family(
    ModelFamily(
        model_type=LlavaConfig.model_type,
        config_class=LlavaConfig,
        causal_lm_class=LlavaLlamaForCausalLM,
        language_model_types=("llama",),
        language_config_class=LlamaConfig,
        language_causal_lm_class=LlamaForCausalLM,
        checkpoint_model_types=("llava",),
    )
)
