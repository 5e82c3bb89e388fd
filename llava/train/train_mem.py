"""`deepspeed llava/train/train_mem.py ...`: `train()` with the fastest attention available.

Upstream hard-codes flash-attention-2 and fails where it is not installed (#641, SPEC 4.10); here it is used when
the `flash_attn` package is importable and CUDA is present, and SDPA otherwise.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from llava.distributed.state import is_main_process
from llava.train.train import train

logger = logging.getLogger(__name__)

FLASH_ATTENTION = "flash_attention_2"
SDPA = "sdpa"


def select_attn_implementation() -> str:
    """flash_attention_2 when `flash_attn` is installed and CUDA is available, else sdpa (with one log line)."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return FLASH_ATTENTION
    if is_main_process():
        reason = "flash_attn is not installed" if torch.cuda.is_available() else "no CUDA device"
        logger.warning("flash-attention-2 unavailable (%s); using PyTorch SDPA attention.", reason)
    return SDPA


if __name__ == "__main__":
    train(attn_implementation=select_attn_implementation())
