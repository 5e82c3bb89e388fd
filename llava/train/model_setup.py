"""Building the model for training: loading (optionally quantized), tokenizer and conversation template, and the
vision modules with the config fields upstream records.

Each function is one step of `llava.train.train.train`; they take the argument dataclasses explicitly and keep no
state of their own.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import transformers
from torch import nn

from llava import conversation as conversation_lib
from llava.conversation import Conversation, get_conv_template, template_name
from llava.data.vision import VisionSetup
from llava.distributed.state import is_zero3_enabled
from llava.distributed.zero3 import disable_4bit_cpu_repacking
from llava.mm_utils import parse_grid_pinpoints
from llava.model.llava_arch import init_rows_at_mean
from llava.model.quantization import bnb_config
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments

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


def load_dtype(training_args: TrainingArguments) -> torch.dtype:
    """The dtype the model's weights are loaded in: bf16 with `--bf16`, otherwise fp32, as upstream.

    Upstream passed `torch_dtype=None` without `--bf16`, which in transformers 4.37 meant fp32. Transformers 5 reads
    None as "auto", i.e. the checkpoint's own dtype: the releases are fp16, and fp16 master weights turn to NaN after
    one AdamW step. `--fp16` keeps fp32 weights too (mixed precision computes in fp16 and scales the loss; DeepSpeed
    makes its own fp16 copy).
    """
    return torch.bfloat16 if training_args.bf16 else torch.float32


def model_dir(model_args: ModelArguments, training_args: TrainingArguments):
    """The local directory of `--model_name_or_path` (a path, or a hub id resolved through the HF cache)."""
    from llava.model.hub import resolve_model_dir

    return resolve_model_dir(
        model_args.model_name_or_path, cache_dir=training_args.cache_dir, what="--model_name_or_path"
    )


def load_model(
    model_args: ModelArguments, training_args: TrainingArguments, attn_implementation: Optional[str] = None
) -> transformers.PreTrainedModel:
    """The language model, as its family's LLaVA causal LM when a vision tower is given, with the cache off.

    The family (Llama, Mistral) comes from the checkpoint's config through :func:`llava.model.families.family_of`.
    A LLaVA release (`"model_type": "llava"`, fp16 shards, no vision tower weights) loads like a Vicuna: its config is
    read here and turned into this package's `LlavaConfig` (transformers' own "llava" is another model).
    """
    from llava.model.families import family_of, language_config, load_checkpoint_config

    directory = model_dir(model_args, training_args)
    multimodal = model_args.vision_tower is not None
    config = load_checkpoint_config(directory, as_llava=multimodal)
    family = family_of(config)
    if multimodal:
        model_class = family.causal_lm_class
    else:
        config, model_class = language_config(config), family.language_causal_lm_class
    model = model_class.from_pretrained(
        directory,
        config=config,
        attn_implementation=attn_implementation,
        dtype=load_dtype(training_args),
        **quantization_kwargs(training_args),
    )
    model.config.use_cache = False
    if training_args.bits == 4 and is_zero3_enabled() and not torch.cuda.is_available():
        # bitsandbytes' CPU repacking does not survive ZeRO-3 re-partitioning (docs/qlora_zero3.md).
        disable_4bit_cpu_repacking(model)
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    return model


def load_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    return transformers.AutoTokenizer.from_pretrained(
        model_dir(model_args, training_args),
        model_max_length=training_args.model_max_length,
        padding_side="right",
    )


def setup_template(model_args: ModelArguments, tokenizer, model: nn.Module) -> Conversation:
    """Set the pad token as upstream does for `--version` and return the conversation template to train with.

    `v0` adds a `[PAD]` token (resizing the embeddings) and, like `v0.5`, uses vicuna_v1; every other version
    pads with `unk` and uses the template of that name. As upstream's train(), the template also becomes
    `llava.conversation.default_conversation`, for code that reads it (a fork's own preprocessing, eval); this
    package passes the returned template explicitly instead. An unknown name is an error (docs/upstream_differences.md #4), caught earlier by
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
    conversation_lib.default_conversation = conversation_lib.conv_templates[name]
    logger.info("Conversation template: %s (--version %s)", name, version)
    return template


def smart_tokenizer_and_embedding_resize(special_tokens_dict: dict, tokenizer, model: nn.Module) -> None:
    """Add special tokens, resize the embeddings and start the new rows at the mean of the old ones."""
    num_new_tokens = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer))
    init_rows_at_mean(model, list(range(len(tokenizer) - num_new_tokens, len(tokenizer))))


def setup_vision_modules(
    model: nn.Module,
    tokenizer,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
) -> VisionSetup:
    """Build the vision tower and projector, decide what trains, and record upstream's config fields; return what
    the data pipeline needs (upstream writes it onto `data_args` instead: `image_processor`, `is_multimodal`,
    `mm_use_im_start_end`)."""
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    vision_tower = model.get_vision_tower()
    vision_tower.to(dtype=_vision_tower_dtype(training_args), device=training_args.device)

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

    # LLaVA-NeXT's tower training, recorded as it does: a config with unfreeze_mm_vision_tower builds the tower
    # with weights at once, so that the checkpoint's tower weights land in it. A checkpoint that already holds its
    # tower (LLaVA-1.6's releases) keeps the mark even when this run leaves the tower frozen: a LoRA run's loader
    # builds that base with the run's config, and the base's fine-tuned tower must not give way to mm_vision_tower's.
    config.unfreeze_mm_vision_tower = model_args.unfreeze_mm_vision_tower or bool(
        getattr(config, "unfreeze_mm_vision_tower", False)
    )
    config.mm_vision_tower_lr = training_args.mm_vision_tower_lr
    if model_args.unfreeze_mm_vision_tower:
        vision_tower.requires_grad_(True)

    config.mm_use_im_start_end = model_args.mm_use_im_start_end
    config.mm_projector_lr = training_args.mm_projector_lr
    config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)
    return VisionSetup(
        image_processor=vision_tower.image_processor,
        mm_use_im_start_end=model_args.mm_use_im_start_end,
        image_aspect_ratio=data_args.image_aspect_ratio,
        image_grid_pinpoints=pinpoints,
    )


def _vision_tower_dtype(training_args: TrainingArguments) -> torch.dtype:
    # Upstream runs the frozen tower in fp16 unless training in bf16. CPUs lack fast fp16 kernels, so there the
    # tower stays in fp32 unless the run is bf16.
    if training_args.bf16:
        return torch.bfloat16
    return torch.float16 if torch.cuda.is_available() else torch.float32


def trainable_dtype(training_args: TrainingArguments, current: torch.dtype) -> torch.dtype:
    """The dtype a trainable parameter currently in `current` must have for the optimizer that will step it.

    Under DeepSpeed every trainable parameter has the engine's dtype (bf16 / fp16 / fp32): ZeRO flattens them into
    one buffer per group, and stage 3 asserts a single dtype (the `finetune_task_lora.sh` crash: PEFT makes the
    LoRA weights fp32 while the checkpoint's projector is bf16; docs/upstream_differences.md #12). Without
    DeepSpeed, the optimizer steps the parameters themselves: fp16 is never a master dtype (no loss scaler manages
    it; AdamW turns it into NaN), and bf16 only with `--bf16`, as upstream.
    """
    if training_args.deepspeed:
        return compute_dtype(training_args)
    if current == torch.float16 or (current == torch.bfloat16 and not training_args.bf16):
        return torch.float32
    return current


def align_trainable_dtypes(model: nn.Module, training_args: TrainingArguments) -> None:
    """Cast each trainable parameter to :func:`trainable_dtype`; raise if one cannot be (a ZeRO-3 partition).

    ZeRO-3 partitions exist only for parameters created while the model was loaded; those already have the
    engine's dtype. The ones created after (LoRA, a new projector or `image_newline`) are whole and cast here.
    """
    wrong = []
    for name, param in model.named_parameters():
        if not param.requires_grad or not param.is_floating_point():
            continue
        wanted = trainable_dtype(training_args, param.dtype)
        if param.dtype == wanted:
            continue
        if hasattr(param, "ds_id"):
            wrong.append(f"{name} ({param.dtype})")
            continue
        param.data = param.data.to(wanted)
    if wrong:
        raise ValueError(
            f"trainable parameters partitioned by ZeRO-3 in another dtype than the run's "
            f"{compute_dtype(training_args)}: {', '.join(wrong[:5])}; check that --bf16 / --fp16 match the DeepSpeed "
            'config\'s bf16 / fp16 sections ("auto" follows the flags)'
        )
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})
    logger.info("Trainable parameters in %s; weights loaded in %s", ", ".join(dtypes) or "-", load_dtype(training_args))
