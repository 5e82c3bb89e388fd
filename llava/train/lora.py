"""LoRA and k-bit (QLoRA) preparation of the language model.

LoRA targets every linear layer of the language model, by leaf name as upstream (`q_proj`, ..., `down_proj`), and
never the vision tower, the projector or `lm_head`. `adapter_config.json` holds upstream's form, the list of leaf
names, which every reader understands (peft of any version, vLLM's LoRA loader, LLaMA-Factory's export). The list
alone would also adapt a vision tower built before LoRA wraps the model whose layers share those names (CLIP has
`q_proj`, `k_proj`, `v_proj`; a LLaVA-1.6 checkpoint that fine-tuned its tower builds it at load time): only then
the multimodal modules go into `exclude_modules` as well, which current peft honours and older readers do not
know (docs/upstream_differences.md #21).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

logger = logging.getLogger(__name__)

MULTIMODAL_KEYWORDS = ("mm_projector", "vision_tower", "vision_resampler")
OUTPUT_HEAD_NAME = "lm_head"
# PEFT matches a string `exclude_modules` against each module's full name with re.fullmatch.
MULTIMODAL_EXCLUDE_PATTERN = r".*(" + "|".join(MULTIMODAL_KEYWORDS) + r").*"


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


def multimodal_modules_sharing(model: nn.Module, targets: list[str]) -> list[str]:
    """The vision tower's and projector's modules that a list of leaf names would also adapt (PEFT matches a name
    that is a target or ends with ``.`` + a target)."""
    wanted = set(targets)
    return [name for name, _ in model.named_modules() if _is_multimodal(name) and name.rpartition(".")[2] in wanted]


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


def add_lora(model: nn.Module, training_args) -> nn.Module:
    """Wrap `model` with LoRA adapters as configured by `--lora_r/--lora_alpha/--lora_dropout/--lora_bias`."""
    from peft import LoraConfig, get_peft_model

    targets = find_all_linear_names(model)
    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=targets,
        exclude_modules=MULTIMODAL_EXCLUDE_PATTERN if multimodal_modules_sharing(model, targets) else None,
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    if training_args.bits == 16 and training_args.bf16:
        model.to(torch.bfloat16)
    logger.info("Adding LoRA adapters (r=%d) to %s", training_args.lora_r, ", ".join(targets))
    with warnings.catch_warnings():
        # PEFT 0.21 reads `is_gradient_checkpointing`, which transformers 5 deprecates (FutureWarning per rank).
        warnings.filterwarnings(
            "ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        return get_peft_model(model, config)


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
