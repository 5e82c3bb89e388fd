"""LLaVA on Llama: ``LlavaConfig`` (model_type "llava_llama") and ``LlavaLlamaForCausalLM``, registered with the
transformers Auto classes so that ``AutoModelForCausalLM.from_pretrained`` opens LLaVA checkpoints."""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig
    config: LlavaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaConfig
    config: LlavaConfig

    def __init__(self, config):
        # Skip LlamaForCausalLM.__init__, which would build a plain LlamaModel first.
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images: torch.FloatTensor | list | None = None,
        image_sizes: list | None = None,
        **kwargs,
    ):
        """Llama's forward with ``images`` (and ``image_sizes`` for anyres) spliced in at ``IMAGE_TOKEN_INDEX``."""
        if cache is None and "past_key_values" in kwargs:  # upstream's name for the cache
            cache = kwargs.pop("past_key_values")
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, cache, inputs_embeds, labels = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, cache, labels, images, image_sizes
                )
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images=None, image_sizes=None, **kwargs):
        """Generate from a prompt holding ``IMAGE_TOKEN_INDEX`` placeholders; returns only the new tokens.

        A batch of prompts comes left-padded with its ``attention_mask``; the spliced sequences are left-padded too
        (whatever padding side training used), so every row's last prompt token sits in the last column.
        """
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported; pass the prompt ids and `images`")
        if images is not None:
            _, position_ids, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes=image_sizes, padding_side="left"
            )
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        return super().generate(
            position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )

    def prepare_inputs_for_generation(self, input_ids, cache=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, inputs_embeds=inputs_embeds, **kwargs)
        if images is not None:
            inputs["images"] = images
        if image_sizes is not None:
            inputs["image_sizes"] = image_sizes
        return inputs


AutoConfig.register("llava_llama", LlavaConfig)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM)
