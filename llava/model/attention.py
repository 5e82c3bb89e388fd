"""Which attention implementation to ask transformers for: flash-attention-2 where it can run, otherwise SDPA.

Upstream hard-codes flash-attention-2 in `train_mem.py` and fails where it is not installed (upstream #641);
training and the loader both decide here instead.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from llava.distributed.state import is_main_process

logger = logging.getLogger(__name__)

FLASH_ATTENTION = "flash_attention_2"
SDPA = "sdpa"


def select_attn_implementation() -> str:
    """flash_attention_2 when the `flash_attn` package is installed and CUDA is available, else sdpa (saying why,
    once, on the main process)."""
    has_cuda = torch.cuda.is_available()
    if has_cuda and importlib.util.find_spec("flash_attn") is not None:
        return FLASH_ATTENTION
    if is_main_process():
        reason = "flash_attn is not installed" if has_cuda else "no CUDA device"
        logger.warning("flash-attention-2 unavailable (%s); using PyTorch SDPA attention.", reason)
    return SDPA
