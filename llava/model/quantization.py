"""The one bitsandbytes configuration LLaVA uses, for QLoRA training (`--bits 4|8`) and for loading
(`load_4bit` / `load_8bit`) alike."""

from __future__ import annotations

import torch

from llava.utils import ignore_log_messages

# On CPUs with AVX512-BF16, bitsandbytes looks for an optional Hub kernel when it is imported and warns that the
# `kernels` package is missing, then uses its own CPU kernels; there is nothing to do about it offline.
ignore_log_messages("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community")

# Kept out of quantization: the projector trains in full precision (as upstream), the vision tower is never
# quantized, and the output head stays whole (transformers' own default) so that added tokens can resize it.
# transformers 5 matches these patterns from the start of a module's full name (or as its suffix), so upstream's
# bare "mm_projector" no longer protects `model.mm_projector.0`: the leading `.*` is needed.
QUANTIZATION_SKIP_MODULES = (r".*mm_projector", r".*vision_tower", "lm_head")
# bitsandbytes' outlier threshold for LLM.int8() (its paper's value; upstream passes it too).
INT8_THRESHOLD = 6.0


def bnb_config(
    bits: int,
    compute_dtype: torch.dtype,
    *,
    double_quant: bool = True,
    quant_type: str = "nf4",
    quant_storage: torch.dtype | None = None,
):
    """A `BitsAndBytesConfig` for 4-bit (NF4 or FP4, optionally double-quantized) or 8-bit weights.

    `quant_storage` is the dtype 4-bit weights are packed into; ZeRO-3 needs the training dtype there, because
    DeepSpeed casts every floating parameter to it and would destroy packed bytes stored as another float type.
    """
    from transformers import BitsAndBytesConfig

    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8 for bitsandbytes quantization, got {bits}")
    return BitsAndBytesConfig(
        load_in_4bit=bits == 4,
        load_in_8bit=bits == 8,
        llm_int8_skip_modules=list(QUANTIZATION_SKIP_MODULES),
        llm_int8_threshold=INT8_THRESHOLD,
        llm_int8_has_fp16_weight=False,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_quant_storage=quant_storage,
    )
