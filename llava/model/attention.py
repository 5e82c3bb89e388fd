"""Which attention implementation to ask transformers for: flash-attention-2 where it can run, otherwise SDPA.

Upstream hard-codes flash-attention-2 in `train_mem.py` and fails where it is not installed (upstream #641);
training and the loader both decide here instead.
"""

from __future__ import annotations

import functools
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


def choose_instead_of_patch(patch: str, wanted: str) -> str:
    """What upstream's attention monkey patches (``replace_llama_attn_with_*``) do here: choose transformers' own
    attention implementation (``wanted``, or SDPA where flash-attention-2 cannot run) and say so once per process."""
    chosen = select_attn_implementation() if wanted == FLASH_ATTENTION else wanted
    _say_once(patch, chosen)
    return chosen


@functools.cache
def _say_once(patch: str, chosen: str) -> None:
    if is_main_process():
        logger.warning(
            "upstream's %s attention patch is not applied: transformers' own %s attention is used instead",
            patch,
            chosen,
        )
