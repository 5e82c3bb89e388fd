"""LoRA and k-bit (QLoRA) preparation of the language model.

LoRA targets every linear layer of the language model, by leaf name as upstream (`q_proj`, ..., `down_proj`), and
never the vision tower, the projector or `lm_head`. `adapter_config.json` holds upstream's form, the list of leaf
names, which every reader understands (peft of any version, vLLM's LoRA loader, LLaMA-Factory's export). The list
alone would also adapt a vision tower built before LoRA wraps the model whose layers share those names (CLIP has
`q_proj`, `k_proj`, `v_proj`; a LLaVA-1.6 checkpoint that fine-tuned its tower builds it at load time): only then
the multimodal modules go into `exclude_modules` as well, which current peft honours and older readers do not
know (docs/upstream_differences.md #21). With `--lora_vision_tower` the tower's linear layers are targets too (only
the projector stays excluded).

PEFT's variants are passed through with PEFT's names and meaning: `--use_dora`, `--use_rslora`,
`--init_lora_weights`. PiSSA and OLoRA take a part of each base weight into the adapter at init; the adapter's
starting values are kept (:func:`keep_initial_adapter`) so that every save converts the adapter into an ordinary
LoRA over the original base (`llava.train.saving`).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from llava.train.arguments import mutates_base_weights

logger = logging.getLogger(__name__)

MULTIMODAL_KEYWORDS = ("mm_projector", "vision_tower", "vision_resampler")
VISION_TOWER_KEYWORD = "vision_tower"
OUTPUT_HEAD_NAME = "lm_head"


def _exclude_pattern(keywords) -> str:
    # PEFT matches a string `exclude_modules` against each module's full name with re.fullmatch.
    return r".*(" + "|".join(keywords) + r").*"


MULTIMODAL_EXCLUDE_PATTERN = _exclude_pattern(MULTIMODAL_KEYWORDS)


def find_all_linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the language model's linear layers (LoRA `target_modules`), sorted.

    Quantized layers count too (bitsandbytes' `Linear4bit` / `Linear8bitLt` subclass `nn.Linear`). The output
    head is left out, as upstream does.
    """
    names = set()
    for name, module in model.named_modules():
        if _is_multimodal(name):
            continue
        if isinstance(module, nn.Linear):
            names.add(name.rpartition(".")[2])
    names.discard(OUTPUT_HEAD_NAME)
    return sorted(names)


def modules_sharing(model: nn.Module, targets: list[str], keywords=MULTIMODAL_KEYWORDS) -> list[str]:
    """The modules named by ``keywords`` (by default the vision tower's and the projector's) that a list of leaf
    names would also adapt (PEFT matches a name that is a target or ends with ``.`` + a target)."""
    wanted = set(targets)
    return [
        name
        for name, _ in model.named_modules()
        if any(keyword in name for keyword in keywords) and name.rpartition(".")[2] in wanted
    ]


def _is_multimodal(module_name: str) -> bool:
    return any(keyword in module_name for keyword in MULTIMODAL_KEYWORDS)


def prepare_for_kbit_training(model: nn.Module, training_args) -> nn.Module:
    """PEFT's k-bit preparation (fp32 norms and non-quantized weights, frozen base) for `--bits 4|8`."""
    from peft import prepare_model_for_kbit_training

    model.config.dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)


def enable_input_grads(model: nn.Module) -> None:
    """With gradient checkpointing and a frozen embedding, the checkpointed blocks need inputs that require grad."""
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    else:
        model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))


def vision_tower_linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the vision tower's linear layers (CLIP: `q_proj`, `k_proj`, `v_proj`, `out_proj`, `fc1`,
    `fc2`), for `--lora_vision_tower`."""
    return sorted(
        {
            name.rpartition(".")[2]
            for name, module in model.named_modules()
            if VISION_TOWER_KEYWORD in name and isinstance(module, nn.Linear)
        }
    )


def lora_config(model: nn.Module, training_args):
    """The `LoraConfig` the flags describe: upstream's `--lora_r/--lora_alpha/--lora_dropout/--lora_bias`, and
    PEFT's `--use_dora/--use_rslora/--init_lora_weights` with PEFT's meaning."""
    from peft import LoraConfig

    from llava.train.arguments import peft_init_lora_weights

    targets = find_all_linear_names(model)
    excluded = MULTIMODAL_KEYWORDS
    if getattr(training_args, "lora_vision_tower", False):
        targets = sorted(set(targets) | set(vision_tower_linear_names(model)))
        excluded = tuple(keyword for keyword in MULTIMODAL_KEYWORDS if keyword != VISION_TOWER_KEYWORD)
    return LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=targets,
        exclude_modules=_exclude_pattern(excluded) if modules_sharing(model, targets, excluded) else None,
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
        use_dora=getattr(training_args, "use_dora", False),
        use_rslora=getattr(training_args, "use_rslora", False),
        init_lora_weights=peft_init_lora_weights(getattr(training_args, "init_lora_weights", "true")),
    )


# The LoRA flags beyond upstream's, recorded in the run's config.json (the adapter's own config holds PEFT's view).
RECORDED_FLAGS = ("use_dora", "use_rslora", "init_lora_weights", "loraplus_lr_ratio", "lora_vision_tower")


def add_lora(model: nn.Module, training_args) -> nn.Module:
    """Wrap `model` with LoRA adapters as configured by the flags (:func:`lora_config`)."""
    from peft import get_peft_model

    config = lora_config(model, training_args)
    targets = sorted(config.target_modules)
    for name in RECORDED_FLAGS:  # in config.json, beside upstream's mm_projector_lr
        setattr(model.config, name, getattr(training_args, name, None))
    if training_args.bits == 16 and training_args.bf16:
        model.to(torch.bfloat16)
    logger.info(
        "Adding LoRA adapters (r=%d%s) to %s",
        training_args.lora_r,
        "".join(
            f", {text}"
            for text, given in (
                ("DoRA", config.use_dora),
                ("rsLoRA", config.use_rslora),
                (f"init {config.init_lora_weights}", config.init_lora_weights is not True),
            )
            if given
        ),
        ", ".join(targets),
    )
    with warnings.catch_warnings():
        # PEFT 0.21 reads `is_gradient_checkpointing`, which transformers 5 deprecates (FutureWarning per rank).
        warnings.filterwarnings(
            "ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        model = get_peft_model(model, config)
    if mutates_base_weights(str(config.init_lora_weights)):
        keep_initial_adapter(model)
    return model


# Where a PiSSA/OLoRA model keeps its adapter's starting values (CPU tensors, the model's parameter names).
INITIAL_ADAPTER_ATTRIBUTE = "llava_initial_adapter"


def keep_initial_adapter(model: nn.Module) -> None:
    """Keep a copy of the adapter as PiSSA/OLoRA initialised it, before any training: what each save converts
    against (peft's `path_initial_model_for_weight_conversion`). The initialisation is deterministic for a seed, so
    a resumed run computes the same values again."""
    state = {name: param.detach().cpu().clone() for name, param in model.named_parameters() if "lora_" in name}
    setattr(model, INITIAL_ADAPTER_ATTRIBUTE, state)
    logger.info("PiSSA/OLoRA: kept the initial adapter (%d tensors) for the conversion at save time", len(state))


def initial_adapter(model: nn.Module):
    """The adapter's starting values kept by :func:`keep_initial_adapter`, or None (an ordinary LoRA)."""
    return getattr(model, INITIAL_ADAPTER_ATTRIBUTE, None)


def cast_kbit_modules(model: nn.Module, training_args) -> None:
    """After k-bit preparation, as upstream: LoRA layers and the (unquantized) embeddings in bf16 when training in
    bf16, norms in fp32."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and training_args.bf16:
            module.to(torch.bfloat16)
        if "norm" in name:
            module.to(torch.float32)
        if (OUTPUT_HEAD_NAME in name or "embed_tokens" in name) and training_args.bf16:
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dtype == torch.float32:
                module.to(torch.bfloat16)
