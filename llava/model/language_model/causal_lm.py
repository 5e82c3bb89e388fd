"""What every LLaVA causal LM adds to its family's ``*ForCausalLM``: ``images`` in ``forward``, ``generate`` and
``prepare_inputs_for_generation``.

Upstream repeats these three methods in each family file; here a family's class lists :class:`LlavaCausalLM` first
among its bases, then the family's transformers class, and defines only its ``__init__`` (which builds the family's
base model with the vision modules, see :func:`init_llava_causal_lm`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..llava_arch import LlavaMetaForCausalLM, is_packed_batch
from ..loss import LossImplementation, causal_lm_loss


def init_llava_causal_lm(model, config, language_causal_lm_class: type, base_model_class: type) -> None:
    """The body of a family's ``__init__``: skip the transformers class's own ``__init__`` (which would build a plain
    base model first), build ``base_model_class`` (the family's model with LLaVA's vision modules) as ``model`` and a
    bias-free ``lm_head``, then transformers' ``post_init``."""
    super(language_causal_lm_class, model).__init__(config)
    model.model = base_model_class(config)
    model.vocab_size = config.vocab_size
    model.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    model.post_init()


class LlavaCausalLM(LlavaMetaForCausalLM):
    """Mixed in before a family's transformers causal LM (``class LlavaLlamaForCausalLM(LlavaCausalLM,
    LlamaForCausalLM)``)."""

    # How a forward without logits (see `skip_logits`) computes the loss: llava.model.loss; the trainer sets "liger"
    # for --use_liger_kernel where Liger runs.
    loss_implementation: LossImplementation = "chunked"

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
        """The family's forward with ``images`` (and ``image_sizes`` for anyres) spliced in at ``IMAGE_TOKEN_INDEX``.

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
            return self._loss_without_logits(input_ids, attention_mask, position_ids, cache, inputs_embeds, labels,
                                             use_cache, **kwargs)  # fmt: skip
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

    def _loss_without_logits(
        self, input_ids, attention_mask, position_ids, cache, inputs_embeds, labels, use_cache, **kwargs
    ) -> CausalLMOutputWithPast:
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
