"""`--use_liger_kernel` (transformers' flag) for our model.

transformers applies Liger's kernels by model type, and Liger knows no "llava_llama": it would log that none apply and
keep the plain loss, so the flag would do nothing for LLaVA. Here Liger's Llama kernels (RMSNorm, RoPE, SwiGLU) are
applied to our language model's modules, and the loss (llava.model.loss) uses Liger's fused linear cross-entropy in
place of the chunked one. `TrainingArguments` turns the flag off, with a warning, where Liger cannot run (no CUDA GPU
or no `liger-kernel`); the chunked loss then keeps the logits out of memory all the same.
"""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)


# Liger's patch function for each LLaVA family's language model (Liger's own names).
LIGER_PATCHES = {"llava_llama": "apply_liger_kernel_to_llama", "llava_mistral": "apply_liger_kernel_to_mistral"}


def use_liger_kernels(model: nn.Module) -> None:
    """Patch `model` (our LLaVA model, or a PEFT model around it) with Liger's kernels and its fused loss."""
    import liger_kernel.transformers

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    patch = LIGER_PATCHES.get(getattr(inner.config, "model_type", None))
    if not hasattr(inner, "loss_implementation") or patch is None:
        logger.warning("--use_liger_kernel: %s is not LLaVA's model; left to transformers", type(inner).__name__)
        return
    # Module-level patches (RoPE) and per-module ones (the norms, the MLPs); the loss is ours, so Liger's forward
    # replacement (fused_linear_cross_entropy=True) would drop the multimodal splice and stays off.
    getattr(liger_kernel.transformers, patch)(
        rope=True, cross_entropy=False, fused_linear_cross_entropy=False, rms_norm=True, swiglu=True, model=inner
    )
    inner.loss_implementation = "liger"
    logger.info("--use_liger_kernel: Liger's RMSNorm, RoPE and SwiGLU kernels, and its fused linear cross-entropy")
