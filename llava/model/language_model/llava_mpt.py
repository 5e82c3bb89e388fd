"""LLaVA on MPT: upstream's names (``LlavaMptConfig``, model_type "llava_mpt"; ``LlavaMptModel``;
``LlavaMptForCausalLM``), refused with a message.

Upstream's own ``LlavaMptForCausalLM`` cannot run a forward pass at c121f04: it calls
``prepare_inputs_labels_for_multimodal`` with the argument list of an older ``llava_arch`` (no ``position_ids``),
which is a ``TypeError`` (``tests/test_families.py`` runs it in upstream's environment). So upstream's current
code has never trained or evaluated a LLaVA-MPT model, there is no such run to stay compatible with, and the one
LLaVA-MPT release (``LLaVA-Lightning-MPT-7B-preview``) predates this code and needs MosaicML's remote code. Rather
than invent a model upstream never ran, every way in (training from an MPT model or a ``llava_mpt`` checkpoint,
loading one, building the class) stops with :data:`MPT_UNSUPPORTED` (docs/upstream_differences.md #18).
"""

from __future__ import annotations

from transformers import MptConfig, MptForCausalLM, MptModel

from ..families import ModelFamily, register_family

__all__ = ["MPT_UNSUPPORTED", "LlavaMptConfig", "LlavaMptForCausalLM", "LlavaMptModel"]

MPT_UNSUPPORTED = (
    "LLaVA-MPT is not supported: upstream's own LlavaMptForCausalLM (haotian-liu/LLaVA c121f04) cannot run a "
    "forward pass (it calls prepare_inputs_labels_for_multimodal with an outdated argument list: TypeError), so "
    "upstream's code never trained or loaded a LLaVA-MPT model this package could match. Train LLaVA on a Llama "
    "(Vicuna) or Mistral language model instead (docs/upstream_differences.md #18)"
)


class LlavaMptConfig(MptConfig):
    model_type = "llava_mpt"


class LlavaMptModel(MptModel):
    config_class = LlavaMptConfig

    def __init__(self, config):
        raise NotImplementedError(MPT_UNSUPPORTED)


class LlavaMptForCausalLM(MptForCausalLM):
    config_class = LlavaMptConfig

    def __init__(self, config):
        raise NotImplementedError(MPT_UNSUPPORTED)


register_family(
    ModelFamily(
        model_type=LlavaMptConfig.model_type,
        config_class=LlavaMptConfig,
        causal_lm_class=LlavaMptForCausalLM,
        language_model_types=("mpt",),
        language_config_class=MptConfig,
        language_causal_lm_class=MptForCausalLM,
        unsupported=MPT_UNSUPPORTED,
    )
)
