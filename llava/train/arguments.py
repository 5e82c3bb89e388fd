"""Command-line arguments of `llava/train/train.py`: upstream's three dataclasses, same flags, same defaults.

`HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))` turns every field into a `--flag`.
Beyond upstream, `TrainingArguments` accepts flags that newer transformers renamed or that need a GPU, so that
upstream's shell scripts run unchanged on today's libraries and on a CPU-only machine.

Every check of a flag and of flag combinations lives in :func:`validate_args`, which collects all problems and
raises once, before any model is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional, Union, get_args, get_origin, get_type_hints

import torch
import transformers
from transformers.trainer_pt_utils import AcceleratorConfig

from llava.data.packing import PackingConfig
from llava.data.vision import anyres_problems
from llava.distributed.zero3 import LoraBias

logger = logging.getLogger(__name__)

ImageAspectRatio = Literal["square", "pad", "anyres"]
QuantBits = Literal[4, 8, 16]
QuantType = Literal["fp4", "nf4"]
VisionSelectFeature = Literal["patch", "cls_patch"]
PatchMergeType = Literal["flat", "spatial", "spatial_unpad"]
# peft's init_lora_weights values offered here (peft's names; 'true' is its default, True).
INIT_LORA_WEIGHTS_PATTERN = re.compile(r"true|gaussian|pissa|pissa_niter_\d+|olora")
# Projector names understood by llava.model.multimodal_projector.builder.build_vision_projector.
PROJECTOR_TYPE_PATTERN = re.compile(r"linear|identity|mlp(\d+)x_gelu")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default="facebook/opt-125m",
        metadata={"help": "Language model (or LLaVA checkpoint) to start from: a directory or a hub id."},
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
        default=None, metadata={"help": "CLIP vision tower (directory or hub id); without it the run is text-only."}
    )
    mm_vision_select_layer: Optional[int] = field(
        default=-1, metadata={"help": "Vision tower hidden layer whose features feed the projector (-2 in LLaVA-1.5)."}
    )
    pretrain_mm_mlp_adapter: Optional[str] = field(
        default=None,
        metadata={
            "help": "mm_projector.bin from a projector-pretraining run (a path, or owner/name/mm_projector.bin on "
            "the hub), loaded into the projector."
        },
    )
    mm_projector_type: Optional[str] = field(
        default="linear",
        metadata={"help": "Projector: 'linear', 'mlp<N>x_gelu' (LLaVA-1.5: mlp2x_gelu) or 'identity'."},
    )
    mm_use_im_start_end: bool = field(
        default=False, metadata={"help": "Wrap the image with <im_start>/<im_end> tokens."}
    )
    mm_use_im_patch_token: bool = field(default=True, metadata={"help": "Add the <im_patch> token to the tokenizer."})
    mm_patch_merge_type: PatchMergeType = field(
        default="flat", metadata={"help": "How anyres patch features are merged: 'flat', 'spatial', 'spatial_unpad'."}
    )
    mm_vision_select_feature: VisionSelectFeature = field(
        default="patch", metadata={"help": "'patch' drops the CLS feature, 'cls_patch' keeps it."}
    )
    s2: bool = field(
        default=False,
        metadata={
            "help": "Multiscale vision features (S2, upstream's CLIPVisionTowerS2): the tower runs at every scale of "
            "--s2_scales and the features are concatenated (the projector's input grows accordingly)."
        },
    )
    s2_scales: Optional[str] = field(
        default="336,672,1008",
        metadata={"help": "S2 image sizes, comma-separated; the smallest is the tower's input size."},
    )
    # LLaVA-NeXT's name and place for it (upstream keeps the tower frozen).
    unfreeze_mm_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Train the vision tower fully (at --mm_vision_tower_lr); its weights are saved with the non-LoRA "
            "trainables (LoRA) or in the model (full fine-tune), and the loader puts them back."
        },
    )


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "Path to the training data (LLaVA JSON list, or JSONL)."})
    lazy_preprocess: bool = field(
        default=False, metadata={"help": "Accepted for compatibility; samples are always processed lazily."}
    )
    is_multimodal: bool = field(
        default=False,
        metadata={
            "help": "Upstream's field, which its train() sets; read only from callers that build datasets from "
            "data_args themselves (training decides from --vision_tower). Not needed on the CLI."
        },
    )
    image_folder: Optional[str] = field(default=None, metadata={"help": "Folder the 'image' paths are relative to."})
    image_aspect_ratio: ImageAspectRatio = field(
        default="square",
        metadata={"help": "'square' (processor's resize + crop), 'pad' (pad to square first, LLaVA-1.5) or 'anyres'."},
    )
    image_grid_pinpoints: Optional[str] = field(
        default=None,
        metadata={
            "help": "For anyres: candidate resolutions as a list literal, e.g. '[[336,672],[672,336],[672,672]]'."
        },
    )
    skip_invalid_samples: bool = field(
        default=False,
        metadata={
            "help": "Drop the samples the data checks reject (each is logged with its id and reason) instead of "
            "stopping; a run where every sample would be dropped still stops."
        },
    )
    # Upstream evaluates nothing while training (eval_dataset=None; upstream #1017, #1536, #1717).
    eval_data_path: Optional[str] = field(
        default=None,
        metadata={"help": "Evaluation data in the training data's format, checked like it; used with --eval_strategy."},
    )
    eval_split_ratio: float = field(
        default=0.0,
        metadata={"help": "Hold out this share of --data_path (chosen with --seed) as evaluation data instead."},
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
    quant_type: QuantType = field(
        default="nf4", metadata={"help": "Quantization data type to use. Should be one of `fp4` or `nf4`."}
    )
    bits: QuantBits = field(
        default=16, metadata={"help": "How many bits to use: 16 (no quantization), 8 or 4 (QLoRA)."}
    )
    eval_generation_samples: int = field(
        default=0,
        metadata={"help": "At each evaluation, answer the first K evaluation samples into eval_generations.jsonl."},
    )
    eval_generation_max_new_tokens: int = field(
        default=64, metadata={"help": "Longest answer --eval_generation_samples generates (tokens)."}
    )
    lora_enable: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full model."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_weight_path: str = field(default="", metadata={"help": "Accepted for compatibility (unused upstream too)."})
    lora_bias: LoraBias = field(
        default="none", metadata={"help": "Which biases LoRA trains: 'none', 'all' or 'lora_only'."}
    )
    mm_projector_lr: Optional[float] = field(
        default=None, metadata={"help": "Learning rate for the projector (default: --learning_rate)."}
    )
    # Beyond upstream: the LoRA variants of PEFT (same names and meaning as peft.LoraConfig), LoRA+ and tower
    # training (LLaVA-NeXT's --mm_vision_tower_lr). All off by default: upstream's LoRA.
    use_dora: bool = field(
        default=False,
        metadata={"help": "DoRA (peft use_dora): LoRA on the direction of each weight plus a trained magnitude."},
    )
    use_rslora: bool = field(
        default=False,
        metadata={"help": "rsLoRA (peft use_rslora): scale the adapter by lora_alpha / sqrt(r) instead of / r."},
    )
    init_lora_weights: str = field(
        default="true",
        metadata={
            "help": "peft's init_lora_weights: 'true' (B zero, A Kaiming), 'gaussian' (A normal with std 1/r), "
            "'pissa' / 'pissa_niter_<N>' (the weight's principal singular directions) or 'olora' (QR). PiSSA and "
            "OLoRA move a part of each base weight into the adapter; the saved adapter is converted back into an "
            "ordinary LoRA over the original base (rank 2r)."
        },
    )
    loraplus_lr_ratio: Optional[float] = field(
        default=None,
        metadata={
            "help": "LoRA+: train the LoRA B matrices (and, as peft's create_loraplus_optimizer, the other 1-D "
            "trainables of the language model) at this multiple of --learning_rate."
        },
    )
    lora_vision_tower: bool = field(
        default=False,
        metadata={"help": "Put LoRA on the vision tower's linear layers too (saved in the adapter)."},
    )
    mm_vision_tower_lr: Optional[float] = field(
        default=None,
        metadata={"help": "Learning rate for the trained vision tower (default: --learning_rate)."},
    )
    console_log_steps: int = field(
        default=0,
        metadata={
            "help": "Print one short line (loss, grad norm, learning rate) every N training steps under the progress "
            "bar, instead of transformers' dict for every log; 0 keeps transformers' output. Logs and reporters "
            "still get every --logging_steps."
        },
    )
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "Batch image and text-only samples separately, grouped by length."}
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Padding-free batches: pack each batch's samples into rows of up to --model_max_length tokens "
            "(counted after the image features are spliced in), attention kept inside each sample. Same loss as "
            "unpacked; not with --image_aspect_ratio anyres."
        },
    )
    evaluation_strategy: Optional[str] = field(
        default=None, metadata={"help": "Old name of --eval_strategy (upstream's scripts pass it); mapped onto it."}
    )
    warmup_ratio: Optional[float] = field(
        default=None,
        metadata={
            "help": "Share of the training steps spent warming up (upstream's scripts pass it; transformers 5 took it "
            "into --warmup_steps, where a value below 1 is a ratio). Ignored when --warmup_steps is given."
        },
    )

    def __post_init__(self):
        # Upstream's scripts predate transformers' rename of --evaluation_strategy to --eval_strategy.
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
            self.evaluation_strategy = None
        self._map_warmup_ratio()
        if not torch.cuda.is_available():
            self._adapt_to_cpu()
        self._check_liger()
        if self.deepspeed and not torch.cuda.is_available():
            # DeepSpeed on CPU runs on the accelerate state `setup_distributed` creates (docs/upstream_differences.md,
            # facts): transformers must reuse it instead of building a plain multi-CPU one.
            self.accelerator_config = _with_configured_state(self.accelerator_config)
        self._drop_missing_reporters()
        # Parsing stays pure: transformers' own __post_init__ sets up the devices (a process group under a launcher)
        # and sizes the DeepSpeed config for the world. It runs in `setup_distributed`, the explicit step that comes
        # before the arguments are used.

    def setup_distributed(self) -> None:
        """Finish building the arguments on the process state this run needs: on a machine without CUDA, the
        DeepSpeed state over gloo first (`llava.distributed.state.init_distributed_state`); then transformers' own
        `__post_init__`, which sets up the devices on that state and reads the DeepSpeed config (ZeRO-3 needs it
        before any model is created).

        The explicit step before the arguments are used: `train()` runs it first thing after parsing and
        `LLaVATrainer` when it is built; until then the arguments hold the flags as parsed and checked, and
        transformers' derived fields (world size, device, DeepSpeed config) do not exist yet. Idempotent.
        """
        if self.__dict__.get("_distributed_ready"):
            return
        if self.deepspeed:
            from llava.distributed.state import init_distributed_state, silence_deepspeed_deprecations

            silence_deepspeed_deprecations()
            if not torch.cuda.is_available():
                init_distributed_state(self.deepspeed)
        super().__post_init__()
        self._distributed_ready = True

    def _map_warmup_ratio(self) -> None:
        """--warmup_ratio r (transformers 4) == --warmup_steps r (transformers 5, for r < 1)."""
        if self.warmup_ratio is None:
            return
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if not self.warmup_steps:
            self.warmup_steps = self.warmup_ratio

    def _adapt_to_cpu(self) -> None:
        """Let GPU-oriented flags from upstream's scripts run on a machine without CUDA (field values only)."""
        if self.tf32:
            warnings.warn("--tf32 needs an Ampere or newer GPU; no GPU found, so it is ignored.", stacklevel=3)
            self.tf32 = None
        if self.fp16:
            warnings.warn("--fp16 is not supported on CPU; training in bf16 instead.", stacklevel=3)
            self.fp16 = False
            self.bf16 = True
        # Pinned memory only helps copies to a GPU (torch warns at every dataloader start without one).
        self.dataloader_pin_memory = False
        if self.bf16 or self.deepspeed:
            # transformers refuses bf16 on CPU unless told the run is meant for the CPU; DeepSpeed's CPU state too.
            self.use_cpu = True

    def _check_liger(self) -> None:
        """--use_liger_kernel (transformers' flag) runs Liger's Triton kernels on a GPU. Where they cannot run, say so
        and train with the chunked loss (llava.model.loss), which needs no full logits either; transformers would
        otherwise stop the run (package missing) or keep our model on its plain loss (model type unknown to Liger)."""
        if not self.use_liger_kernel:
            return
        from llava.model.loss import liger_available

        if liger_available():
            return
        missing = "no GPU found" if not torch.cuda.is_available() else "liger-kernel is not installed"
        warnings.warn(
            f"--use_liger_kernel: Liger's kernels need a CUDA GPU and the liger-kernel package; {missing}, so the "
            "loss is the chunked cross-entropy instead (no full logits either; same loss).",
            stacklevel=3,
        )
        self.use_liger_kernel = False

    def _drop_missing_reporters(self) -> None:
        """Drop `--report_to wandb` (upstream's scripts pass it) when wandb is not installed, with one warning."""
        reporters = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        if "wandb" in reporters and importlib.util.find_spec("wandb") is None:
            warnings.warn(
                "--report_to wandb was given but wandb is not installed; not reporting to it "
                "(pip install wandb to enable it).",
                stacklevel=3,
            )
            self.report_to = [name for name in reporters if name != "wandb"]


def _with_configured_state(value) -> AcceleratorConfig:
    """`--accelerator_config` as transformers accepts it (nothing, a dict, JSON text or a JSON file) with
    `use_configured_state` on and the user's other settings kept."""
    if isinstance(value, AcceleratorConfig):
        config = value
    elif value is None:
        config = AcceleratorConfig()
    elif isinstance(value, dict):
        config = AcceleratorConfig(**value)
    elif isinstance(value, str) and value.lstrip().startswith("{"):
        config = AcceleratorConfig(**json.loads(value))
    else:
        config = AcceleratorConfig.from_json_file(value)
    config.use_configured_state = True
    return config


def parse_args(
    argv: Optional[Sequence[str]] = None,
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse the command line (`sys.argv` when `argv` is None) into the three dataclasses and validate them.

    Pure: nothing but the three objects is created (no process group, no environment variables); the process state
    comes with `TrainingArguments.setup_distributed`.
    """
    parser = _ArgumentParser(ARGUMENT_CLASSES)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=None if argv is None else list(argv))
    validate_args(model_args, data_args, training_args)
    return model_args, data_args, training_args


def literal_choices(cls: type) -> dict[str, tuple]:
    """The fields that ``cls`` itself declares with a ``Literal`` type (``Optional[Literal[...]]`` too), each with
    its choices, in declaration order: read from the annotations, so a new such field is checked without a list
    to keep."""
    own = vars(cls).get("__annotations__", {})
    hints = get_type_hints(cls)
    choices = {}
    for name in own:
        hint = hints[name]
        if get_origin(hint) is Union:
            hint = next((arg for arg in get_args(hint) if get_origin(arg) is Literal), hint)
        if get_origin(hint) is Literal:
            choices[name] = get_args(hint)
    return choices


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)
# The fields typed with choices; `validate_args` checks each of them (their order: the classes', then the fields').
LITERAL_FIELDS = frozenset(name for cls in ARGUMENT_CLASSES for name in literal_choices(cls))


class _ArgumentParser(transformers.HfArgumentParser):
    """HfArgumentParser turns `Literal` fields into argparse choices, and argparse stops at the first bad one;
    `validate_args` checks them instead, so that every problem is reported at once."""

    def add_argument(self, *args, **kwargs):
        if kwargs.get("dest", args[0].lstrip("-") if args else None) in LITERAL_FIELDS:
            kwargs.pop("choices", None)
        return super().add_argument(*args, **kwargs)


class ArgumentsError(ValueError):
    """One or more command-line flags are wrong; the message lists every problem found."""


def validate_args(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Check every flag and flag combination, collect all problems and raise them together.

    Runs before anything heavy is loaded, so that a typo costs seconds, not a model load.
    """
    problems = (
        _check_choices(model_args, data_args, training_args)
        + _check_files(model_args, data_args)
        + _check_combinations(model_args, data_args, training_args)
    )
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise ArgumentsError(f"{len(problems)} problem(s) with the training arguments:\n{listing}")


def _not_one_of(flag: str, value, choices: tuple) -> Optional[str]:
    if value in choices:
        return None
    shown = value if isinstance(value, str) and not isinstance(choices[0], str) else repr(value)
    return f"{flag} {shown} is not one of {', '.join(repr(c) for c in choices)}."


def _check_choices(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> list[str]:
    from llava.conversation import VERSIONS_WITH_DEFAULT_TEMPLATE, conv_templates

    problems = [
        _not_one_of(f"--{name}", getattr(args, name), choices)
        for cls, args in zip(ARGUMENT_CLASSES, (model_args, data_args, training_args))
        for name, choices in literal_choices(cls).items()
    ]
    versions = set(conv_templates) | set(VERSIONS_WITH_DEFAULT_TEMPLATE)
    if model_args.version not in versions:
        # upstream silently falls back to vicuna_v1 (docs/upstream_differences.md #4)
        problems.append(
            f"--version {model_args.version!r} is not a conversation template; valid names: "
            f"{', '.join(sorted(versions))}."
        )
    if model_args.s2:
        problems += _check_s2_scales(model_args.s2_scales)
    if not PROJECTOR_TYPE_PATTERN.fullmatch(model_args.mm_projector_type or ""):
        problems.append(
            f"--mm_projector_type {model_args.mm_projector_type!r} is unknown; use 'linear', 'identity' or "
            "'mlp<N>x_gelu' (LLaVA-1.5: 'mlp2x_gelu')."
        )
    if not INIT_LORA_WEIGHTS_PATTERN.fullmatch(training_args.init_lora_weights):
        problems.append(
            f"--init_lora_weights {training_args.init_lora_weights!r} is not one of 'true', 'gaussian', 'pissa', "
            "'pissa_niter_<N>', 'olora'."
        )
    for flag, value in (("--loraplus_lr_ratio", training_args.loraplus_lr_ratio),
                        ("--mm_vision_tower_lr", training_args.mm_vision_tower_lr)):  # fmt: skip
        if value is not None and value <= 0:
            problems.append(f"{flag} must be positive, got {value}.")
    if training_args.lora_r <= 0:
        problems.append(f"--lora_r must be a positive rank, got {training_args.lora_r}.")
    if not 0.0 <= training_args.lora_dropout < 1.0:
        problems.append(f"--lora_dropout must be in [0, 1), got {training_args.lora_dropout}.")
    if training_args.model_max_length <= 0:
        problems.append(f"--model_max_length must be positive, got {training_args.model_max_length}.")
    return [problem for problem in problems if problem is not None]


def _check_s2_scales(scales: Optional[str]) -> list[str]:
    from llava.model.multimodal_encoder.s2 import parse_s2_scales

    try:
        parse_s2_scales(scales or "")
    except ValueError as error:
        return [f"{error}."]
    return []


def _check_files(model_args: ModelArguments, data_args: DataArguments) -> list[str]:
    problems = []
    if data_args.data_path is None:
        problems.append("--data_path is required: a LLaVA JSON (or JSONL) file of conversations.")
    elif not os.path.isfile(data_args.data_path):
        problems.append(f"--data_path {data_args.data_path!r} does not exist or is not a file.")
    if data_args.eval_data_path is not None and not os.path.isfile(data_args.eval_data_path):
        problems.append(f"--eval_data_path {data_args.eval_data_path!r} does not exist or is not a file.")
    if data_args.image_folder is not None and not os.path.isdir(data_args.image_folder):
        problems.append(f"--image_folder {data_args.image_folder!r} does not exist or is not a folder.")
    adapter = model_args.pretrain_mm_mlp_adapter
    if adapter is not None and not os.path.isfile(adapter):
        problems += _check_hub_file(adapter)
    return problems


def _check_hub_file(adapter: str) -> list[str]:
    """`--pretrain_mm_mlp_adapter owner/name/mm_projector.bin` names a file on the hub (upstream's released
    projectors); it must resolve (from the cache when offline) before anything loads."""
    from llava.model.hub import HubResolutionError, is_hub_id, resolve_file

    if not is_hub_id("/".join(adapter.split("/")[:2])):
        return [
            f"--pretrain_mm_mlp_adapter {adapter!r} does not exist; pass the mm_projector.bin written by a "
            "--tune_mm_mlp_adapter run, or a file on the hub such as "
            "liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5/mm_projector.bin."
        ]
    try:
        resolve_file(adapter, what="--pretrain_mm_mlp_adapter")
    except HubResolutionError as error:
        return [str(error)]
    return []


def _check_combinations(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> list[str]:
    problems = []
    quantized = training_args.bits in (4, 8)
    if quantized and not training_args.lora_enable:
        problems.append(
            f"--bits {training_args.bits} quantizes the language model, whose weights then cannot be trained; "
            "add --lora_enable True (QLoRA) or drop --bits."
        )
    if model_args.tune_mm_mlp_adapter:
        if model_args.vision_tower is None:
            problems.append("--tune_mm_mlp_adapter trains the projector, which needs --vision_tower.")
        if training_args.freeze_mm_mlp_adapter:
            problems.append("--tune_mm_mlp_adapter with --freeze_mm_mlp_adapter leaves nothing to train; drop one.")
        if training_args.lora_enable:
            problems.append(
                "--tune_mm_mlp_adapter freezes everything but the projector, LoRA weights included; "
                "drop --lora_enable for projector pretraining."
            )
    problems += _check_evaluation(data_args, training_args)
    problems += anyres_problems(data_args.image_aspect_ratio, data_args.image_grid_pinpoints)
    packing_problem = PackingConfig.problem(data_args.image_aspect_ratio)
    if training_args.packing and model_args.vision_tower is not None and packing_problem:
        problems.append(packing_problem)
    if model_args.vision_tower is None and model_args.pretrain_mm_mlp_adapter is not None:
        problems.append("--pretrain_mm_mlp_adapter needs --vision_tower (the projector maps its features).")
    if training_args.mm_projector_lr is not None and model_args.vision_tower is None:
        problems.append(
            "--mm_projector_lr sets the projector's learning rate, but there is no projector without "
            "--vision_tower; drop it or add --vision_tower."
        )
    if quantized and model_args.tune_mm_mlp_adapter:
        problems.append(
            f"--bits {training_args.bits} with --tune_mm_mlp_adapter: projector pretraining trains only "
            "the full-precision projector, quantizing the frozen model gains nothing; drop --bits."
        )
    problems += _check_lora_variants(model_args, training_args)
    problems += _missing_packages(training_args)
    return problems


def _check_lora_variants(model_args: ModelArguments, training_args: TrainingArguments) -> list[str]:
    """DoRA, rsLoRA, PiSSA/OLoRA, LoRA+ and vision-tower training."""
    problems = []
    init = training_args.init_lora_weights
    lora_only = [
        flag
        for flag, given in (
            ("--use_dora", training_args.use_dora),
            ("--use_rslora", training_args.use_rslora),
            (f"--init_lora_weights {init}", init != "true"),
            ("--loraplus_lr_ratio", training_args.loraplus_lr_ratio is not None),
            ("--lora_vision_tower", training_args.lora_vision_tower),
        )
        if given
    ]
    if lora_only and not training_args.lora_enable:
        problems.append(f"{', '.join(lora_only)} configure LoRA adapters: add --lora_enable True or drop them.")
    if mutates_base_weights(init):
        if training_args.use_dora:
            problems.append(
                f"--init_lora_weights {init} with --use_dora: the saved adapter is converted into an ordinary LoRA "
                "over the original base, which DoRA's magnitudes cannot be; drop one of them."
            )
        if init.startswith("pissa") and training_args.bits in (4, 8):
            problems.append(
                f"--init_lora_weights {init} with --bits {training_args.bits}: PiSSA decomposes full-precision "
                "weights (peft refuses quantized ones); use --init_lora_weights olora, or drop --bits."
            )
    if training_args.use_dora and training_args.bits == 8:
        # Measured with peft 0.21 and bitsandbytes 0.50.2: the second step stops in bitsandbytes' int8 matmul
        # ("'NoneType' object has no attribute 'unsqueeze'": DoRA's per-step dequantization clears its scale state).
        problems.append(
            "--use_dora with --bits 8: DoRA over bitsandbytes' 8-bit weights fails at the second step (peft 0.21, "
            "bitsandbytes 0.50.2); use --bits 4 (QLoRA) or 16 with --use_dora."
        )
    tower_flags = [
        flag
        for flag, given in (
            ("--unfreeze_mm_vision_tower", model_args.unfreeze_mm_vision_tower),
            ("--lora_vision_tower", training_args.lora_vision_tower),
            ("--mm_vision_tower_lr", training_args.mm_vision_tower_lr is not None),
        )
        if given
    ]
    if tower_flags and model_args.vision_tower is None:
        problems.append(f"{', '.join(tower_flags)} train the vision tower, which needs --vision_tower.")
    if model_args.unfreeze_mm_vision_tower and training_args.lora_vision_tower:
        problems.append(
            "--unfreeze_mm_vision_tower trains every tower weight, --lora_vision_tower adapters on them; pass one."
        )
    if tower_flags and model_args.tune_mm_mlp_adapter:
        problems.append(f"--tune_mm_mlp_adapter trains the projector alone; drop {', '.join(tower_flags)}.")
    if (
        training_args.mm_vision_tower_lr is not None
        and not model_args.unfreeze_mm_vision_tower
        and not training_args.lora_vision_tower
    ):
        problems.append(
            "--mm_vision_tower_lr sets the learning rate of a trained vision tower: add --unfreeze_mm_vision_tower "
            "True (or --lora_vision_tower True), or drop it."
        )
    return problems


def mutates_base_weights(init_lora_weights: str) -> bool:
    """PiSSA and OLoRA start the adapter from a part of each base weight and take that part out of the base."""
    return init_lora_weights.startswith("pissa") or init_lora_weights == "olora"


def peft_init_lora_weights(init_lora_weights: str):
    """The flag's text as peft.LoraConfig takes it ('true' is the boolean True)."""
    return True if init_lora_weights == "true" else init_lora_weights


def _check_evaluation(data_args: DataArguments, training_args: TrainingArguments) -> list[str]:
    problems = []
    if not 0.0 <= data_args.eval_split_ratio < 1.0:
        problems.append(f"--eval_split_ratio must be in [0, 1), got {data_args.eval_split_ratio}.")
    has_eval_data = data_args.eval_data_path is not None or data_args.eval_split_ratio > 0
    if data_args.eval_data_path is not None and data_args.eval_split_ratio > 0:
        problems.append("--eval_data_path and --eval_split_ratio both choose the evaluation data; pass one.")
    if training_args.eval_generation_samples < 0 or training_args.eval_generation_max_new_tokens < 1:
        problems.append(
            "--eval_generation_samples must be 0 or more and --eval_generation_max_new_tokens at least 1, got "
            f"{training_args.eval_generation_samples} and {training_args.eval_generation_max_new_tokens}."
        )
    if training_args.eval_generation_samples > 0 and not has_eval_data:
        problems.append(
            "--eval_generation_samples answers evaluation samples: pass --eval_data_path or --eval_split_ratio."
        )
    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if strategy != "no" and not has_eval_data:
        problems.append(
            f"--eval_strategy {strategy} needs evaluation data: pass --eval_data_path (same format as --data_path) "
            "or --eval_split_ratio (a held-out share of --data_path)."
        )
    return problems


def _missing_packages(training_args: TrainingArguments) -> list[str]:
    """Optional packages the flags need, checked before anything is loaded."""
    needs = []
    if training_args.lora_enable:
        needs.append(("peft", "--lora_enable"))
    if training_args.bits in (4, 8):
        needs.append(("bitsandbytes", f"--bits {training_args.bits}"))
    if training_args.deepspeed:
        needs.append(("deepspeed", "--deepspeed"))
    return [
        f"{flag} needs the {package!r} package, which is not installed: pip install -e '.[train]' (or {package})."
        for package, flag in needs
        if importlib.util.find_spec(package) is None
    ]
