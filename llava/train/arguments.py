"""Command-line arguments of `llava/train/train.py`: upstream's three dataclasses, same flags, same defaults.

`HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))` turns every field into a `--flag`.
Beyond upstream, `TrainingArguments` accepts flags that newer transformers renamed or that need a GPU, so that
upstream's shell scripts run unchanged on today's libraries and on a CPU-only machine.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import transformers

logger = logging.getLogger(__name__)

ImageAspectRatio = Literal["square", "pad", "anyres"]
LoraBias = Literal["none", "all", "lora_only"]


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default="facebook/opt-125m",
        metadata={"help": "Language model (or LLaVA checkpoint) directory to start from."},
    )
    version: Optional[str] = field(
        default="v0",
        metadata={
            "help": "Conversation template name (a key of llava.conversation.conv_templates). 'v0' keeps upstream's "
            "behaviour: a [PAD] token is added and the vicuna_v1 template is used."
        },
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "Freeze the language model's weights."})
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "Projector pretraining: train only the multimodal projector."}
    )
    vision_tower: Optional[str] = field(
        default=None, metadata={"help": "CLIP vision tower directory; without it the run is text-only."}
    )
    mm_vision_select_layer: Optional[int] = field(
        default=-1, metadata={"help": "Vision tower hidden layer whose features feed the projector (-2 in LLaVA-1.5)."}
    )
    pretrain_mm_mlp_adapter: Optional[str] = field(
        default=None, metadata={"help": "mm_projector.bin from a projector-pretraining run, loaded into the projector."}
    )
    mm_projector_type: Optional[str] = field(
        default="linear", metadata={"help": "Projector: 'linear', 'mlp<N>x_gelu' (LLaVA-1.5: mlp2x_gelu) or 'identity'."}
    )
    mm_use_im_start_end: bool = field(
        default=False, metadata={"help": "Wrap the image with <im_start>/<im_end> tokens."}
    )
    mm_use_im_patch_token: bool = field(default=True, metadata={"help": "Add the <im_patch> token to the tokenizer."})
    mm_patch_merge_type: Optional[str] = field(
        default="flat", metadata={"help": "How anyres patch features are merged: 'flat', 'spatial', 'spatial_unpad'."}
    )
    mm_vision_select_feature: Optional[str] = field(
        default="patch", metadata={"help": "'patch' drops the CLS feature, 'cls_patch' keeps it."}
    )


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "Path to the training data (LLaVA JSON list, or JSONL)."})
    lazy_preprocess: bool = field(
        default=False, metadata={"help": "Accepted for compatibility; samples are always processed lazily."}
    )
    is_multimodal: bool = field(
        default=False, metadata={"help": "Set by training when a vision tower is configured; not needed on the CLI."}
    )
    image_folder: Optional[str] = field(default=None, metadata={"help": "Folder the 'image' paths are relative to."})
    image_aspect_ratio: str = field(
        default="square",
        metadata={"help": "'square' (processor's resize + crop), 'pad' (pad to square first, LLaVA-1.5) or 'anyres'."},
    )
    image_grid_pinpoints: Optional[str] = field(
        default=None,
        metadata={"help": "For anyres: candidate resolutions as a list literal, e.g. '[[336,672],[672,336],[672,672]]'."},
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: Optional[str] = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "Keep the projector frozen."})
    mpt_attn_impl: Optional[str] = field(default="triton", metadata={"help": "Accepted for compatibility (MPT only)."})
    model_max_length: int = field(
        default=512,
        metadata={"help": "Maximum sequence length. Sequences will be right padded (and possibly truncated)."},
    )
    double_quant: bool = field(
        default=True, metadata={"help": "Compress the quantization statistics through double quantization."}
    )
    quant_type: str = field(
        default="nf4", metadata={"help": "Quantization data type to use. Should be one of `fp4` or `nf4`."}
    )
    bits: int = field(default=16, metadata={"help": "How many bits to use: 16 (no quantization), 8 or 4 (QLoRA)."})
    lora_enable: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full model."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_weight_path: str = field(default="", metadata={"help": "Accepted for compatibility (unused upstream too)."})
    lora_bias: str = field(default="none", metadata={"help": "Which biases LoRA trains: 'none', 'all' or 'lora_only'."})
    mm_projector_lr: Optional[float] = field(
        default=None, metadata={"help": "Learning rate for the projector (default: --learning_rate)."}
    )
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "Batch image and text-only samples separately, grouped by length."}
    )
    evaluation_strategy: Optional[str] = field(
        default=None, metadata={"help": "Old name of --eval_strategy (upstream's scripts pass it); mapped onto it."}
    )

    def __post_init__(self):
        # Upstream's scripts predate transformers' rename of --evaluation_strategy to --eval_strategy.
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
            self.evaluation_strategy = None
        if not torch.cuda.is_available():
            self._adapt_to_cpu()
        super().__post_init__()

    def _adapt_to_cpu(self) -> None:
        """Let GPU-oriented flags from upstream's scripts run on a machine without CUDA."""
        if self.tf32:
            warnings.warn("--tf32 needs an Ampere or newer GPU; no GPU found, so it is ignored.", stacklevel=3)
            self.tf32 = None
        if (self.bf16 or self.fp16) and not self.use_cpu:
            # transformers refuses bf16 on CPU unless told the run is meant for the CPU.
            self.use_cpu = True
        if self.fp16:
            warnings.warn("--fp16 is not supported on CPU; training in bf16 instead.", stacklevel=3)
            self.fp16 = False
            self.bf16 = True
