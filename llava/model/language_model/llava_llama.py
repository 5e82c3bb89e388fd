"""LLaVA on Llama: ``LlavaConfig`` (model_type "llava_llama") and ``LlavaLlamaForCausalLM``, registered with the
transformers Auto classes so that ``AutoModelForCausalLM.from_pretrained`` opens LLaVA checkpoints.

The released checkpoints (``liuhaotian/llava-v1.5-7b``, ...) say ``"model_type": "llava"`` in their config.json, a
name that transformers 5 gives to its own, differently laid out ``LlavaConfig`` (upstream #1622 shows the warning
users saw). That registration is left alone; :func:`load_checkpoint_config` reads such a config itself and builds
this package's ``LlavaConfig`` from it, as upstream's ``LlavaLlamaForCausalLM.from_pretrained`` did.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ..files import CONFIG_FILE
from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel, is_packed_batch
from ..loss import LossImplementation, causal_lm_loss


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"


# Upstream's own checkpoints: "llava" (what the releases' transformers 4.31 wrote) and "llava_llama" (ours, and
# upstream's since). Both hold a Llama's fields at the top level plus the `mm_*` fields.
UPSTREAM_LLAVA_MODEL_TYPES = ("llava", "llava_llama")


def is_llava_config(config: dict[str, Any]) -> bool:
    """An upstream-format LLaVA config: model_type ``llava``/``llava_llama``, or any config with ``mm_vision_tower``."""
    return config.get("model_type") in UPSTREAM_LLAVA_MODEL_TYPES or "mm_vision_tower" in config


def llava_config_from_dict(config: dict[str, Any]) -> LlavaConfig:
    """This package's ``LlavaConfig`` from a LLaVA (or plain Llama) config dict, whatever model_type it names."""
    config = {**config, "model_type": LlavaConfig.model_type}
    if "rope_scaling" in config and config["rope_scaling"] is None:
        del config["rope_scaling"]  # transformers 4.31 wrote null; transformers 5 warns about the key itself
    return LlavaConfig.from_dict(config)


def load_checkpoint_config(model_dir: str | PathLike[str], as_llava: bool = False):
    """The config of the model in ``model_dir`` (a local directory), LLaVA checkpoints as ``LlavaConfig``.

    Args:
        as_llava: build a ``LlavaConfig`` from any Llama-family config (training a LLaVA model from a plain
            language model, as ``--vision_tower`` asks).

    Raises:
        ValueError: the directory holds transformers' own LLaVA format (``text_config``/``vision_config``, e.g.
            ``llava-hf/llava-1.5-7b-hf``), which ``LlavaLlamaForCausalLM`` cannot hold.
    """
    path = Path(model_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; {model_dir} is not a model directory") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if config.get("model_type") == "llava" and "text_config" in config:
        raise ValueError(
            f"{model_dir} holds a LLaVA in transformers' own format (LlavaForConditionalGeneration, like "
            "llava-hf/llava-1.5-7b-hf); this package trains and loads upstream's format. Use the upstream release "
            "(e.g. liuhaotian/llava-v1.5-7b) or load this one with transformers.LlavaForConditionalGeneration"
        )
    if as_llava or is_llava_config(config):
        return llava_config_from_dict(config)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig
    config: LlavaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaConfig
    config: LlavaConfig
    # How a forward without logits (see `skip_logits`) computes the loss: llava.model.loss; the trainer sets "liger"
    # for --use_liger_kernel where Liger runs.
    loss_implementation: LossImplementation = "chunked"

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
        skip_logits: bool | None = None,
        **kwargs,
    ):
        """Llama's forward with ``images`` (and ``image_sizes`` for anyres) spliced in at ``IMAGE_TOKEN_INDEX``.

        ``skip_logits`` (Liger's and transformers' name; default: in training, when there are labels): return the
        loss alone, computed from the last hidden state without the full logits (llava.model.loss); ``logits`` is
        then None. Evaluation and inference get the logits as ever.
        """
        if cache is None and "past_key_values" in kwargs:  # upstream's name for the cache
            cache = kwargs.pop("past_key_values")
        if is_packed_batch(position_ids, attention_mask):
            # transformers reads packing from the position ids only without a cache; packed rows are never continued.
            use_cache = False
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, cache, inputs_embeds, labels = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, cache, labels, images, image_sizes
                )
            )
        if skip_logits is None:
            skip_logits = self.training and labels is not None
        if skip_logits:
            if labels is None and "shift_labels" not in kwargs:
                raise ValueError("skip_logits=True returns only the loss, which needs labels")
            outputs = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )
            loss = causal_lm_loss(
                outputs.last_hidden_state,
                self.lm_head,
                labels,
                self.loss_implementation,
                num_items_in_batch=kwargs.get("num_items_in_batch"),
                shift_labels=kwargs.get("shift_labels"),
            )
            if loss is not None:
                return CausalLMOutputWithPast(
                    loss=loss, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions
                )
            # A head the chunked loss cannot take (see causal_lm_loss): score the hidden states already computed.
            logits = self.lm_head(outputs.last_hidden_state)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            return CausalLMOutputWithPast(
                loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
                attentions=outputs.attentions,
            )  # fmt: skip
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
