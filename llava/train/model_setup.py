"""Building the model for training: loading (optionally quantized), tokenizer and conversation template, and the
vision modules with the config fields upstream records.

Each function is one step of `llava.train.train.train`; they take the argument dataclasses explicitly and keep no
state of their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import transformers
from torch import nn

from llava.conversation import Conversation, get_conv_template, template_name
from llava.train.arguments import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    parse_grid_pinpoints,
)
from llava.distributed.state import is_zero3_enabled
from llava.model.quantization import bnb_config
from llava.utils import ignored_log_messages
from llava.distributed.zero3 import disable_4bit_cpu_repacking
from llava.model.llava_arch import init_rows_at_mean

logger = logging.getLogger(__name__)

PAD_TOKEN = "[PAD]"


def compute_dtype(training_args: TrainingArguments) -> torch.dtype:
    if training_args.fp16:
        return torch.float16
    return torch.bfloat16 if training_args.bf16 else torch.float32


def quantization_kwargs(training_args: TrainingArguments) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for `--bits 4|8` (none for 16).

    Upstream always passes `device_map`, which ZeRO-3 forbids, so QLoRA could not run under ZeRO-3 (upstream
    #1692). Under ZeRO-3 there is no `device_map`, and 4-bit weights are stored in the training dtype so that
    ZeRO-3 can partition them with the other parameters.
    """
    if training_args.bits not in (4, 8):
        return {}
    dtype = compute_dtype(training_args)
    config = bnb_config(
        training_args.bits,
        dtype,
        double_quant=training_args.double_quant,
        quant_type=training_args.quant_type,
        quant_storage=dtype if is_zero3_enabled() else None,
    )
    kwargs: dict[str, Any] = {"quantization_config": config}
    if not is_zero3_enabled():
        kwargs["device_map"] = {"": training_args.device}
    return kwargs


def load_model(
    model_args: ModelArguments, training_args: TrainingArguments, attn_implementation: Optional[str] = None
) -> transformers.PreTrainedModel:
    """The language model (a `LlavaLlamaForCausalLM` when a vision tower is given), with the cache off."""
    kwargs = dict(
        cache_dir=training_args.cache_dir,
        attn_implementation=attn_implementation,
        dtype=torch.bfloat16 if training_args.bf16 else None,
        **quantization_kwargs(training_args),
    )
    if model_args.vision_tower is not None:
        from llava.model import LlavaLlamaForCausalLM

        # A Vicuna base loads into the LLaVA class by design (upstream does the same); transformers warns about the
        # model types differing at every start, on every rank.
        with ignored_log_messages("transformers.configuration_utils", "You are using a model of type"):
            model = LlavaLlamaForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    else:
        model = transformers.LlamaForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    model.config.use_cache = False
    if training_args.bits == 4 and is_zero3_enabled() and not torch.cuda.is_available():
        # bitsandbytes' CPU repacking does not survive ZeRO-3 re-partitioning (docs/qlora_zero3.md).
        disable_4bit_cpu_repacking(model)
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    return model


def load_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    return transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
    )


def setup_template(model_args: ModelArguments, tokenizer, model: nn.Module) -> Conversation:
    """Set the pad token as upstream does for `--version` and return the conversation template to train with.

    `v0` adds a `[PAD]` token (resizing the embeddings) and, like `v0.5`, uses vicuna_v1; every other version
    pads with `unk` and uses the template of that name. An unknown name is an error (docs/upstream_differences.md #4), caught earlier by
    `validate_args`; `get_conv_template` raises too, for callers that skip validation.
    """
    version = model_args.version
    if version == "v0":
        if tokenizer.pad_token is None:
            smart_tokenizer_and_embedding_resize({"pad_token": PAD_TOKEN}, tokenizer, model)
    else:
        tokenizer.pad_token = tokenizer.unk_token
    name = template_name(version)
    template = get_conv_template(name)
    logger.info("Conversation template: %s (--version %s)", name, version)
    return template


def smart_tokenizer_and_embedding_resize(special_tokens_dict: dict, tokenizer, model: nn.Module) -> None:
    """Add special tokens, resize the embeddings and start the new rows at the mean of the old ones."""
    num_new_tokens = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer))
    init_rows_at_mean(model, list(range(len(tokenizer) - num_new_tokens, len(tokenizer))))


@dataclass(frozen=True)
class VisionSetup:
    """What the data pipeline needs from the vision side of the model."""

    image_processor: Any
    image_grid_pinpoints: Optional[list[list[int]]]


def setup_vision_modules(
    model: nn.Module,
    tokenizer,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
) -> VisionSetup:
    """Build the vision tower and projector, decide what trains, and record upstream's config fields."""
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    vision_tower = model.get_vision_tower()
    vision_tower.to(dtype=_vision_tower_dtype(training_args), device=training_args.device)
    data_args.is_multimodal = True

    config = model.config
    pinpoints = parse_grid_pinpoints(data_args.image_grid_pinpoints) if data_args.image_grid_pinpoints else None
    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.image_grid_pinpoints = pinpoints
    config.tokenizer_padding_side = tokenizer.padding_side
    config.tokenizer_model_max_length = tokenizer.model_max_length

    projector = model.get_model().mm_projector
    config.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        projector.requires_grad_(True)
    config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    if training_args.freeze_mm_mlp_adapter:
        projector.requires_grad_(False)
    if training_args.bits in (4, 8):
        projector.to(dtype=compute_dtype(training_args), device=training_args.device)

    config.mm_use_im_start_end = model_args.mm_use_im_start_end
    config.mm_projector_lr = training_args.mm_projector_lr
    config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)
    return VisionSetup(image_processor=vision_tower.image_processor, image_grid_pinpoints=pinpoints)


def _vision_tower_dtype(training_args: TrainingArguments) -> torch.dtype:
    # Upstream runs the frozen tower in fp16 unless training in bf16. CPUs lack fast fp16 kernels, so there the
    # tower stays in fp32 unless the run is bf16.
    if training_args.bf16:
        return torch.bfloat16
    return torch.float16 if torch.cuda.is_available() else torch.float32
