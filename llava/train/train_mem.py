"""`deepspeed llava/train/train_mem.py ...`: `train()` with the fastest attention available.

Upstream hard-codes flash-attention-2 and fails where it is not installed (upstream #641); here it is used when the
`flash_attn` package is importable and CUDA is present, and SDPA otherwise (`llava.model.attention`).
"""

from __future__ import annotations

from llava.distributed.state import exit_process
from llava.model.attention import select_attn_implementation
from llava.train.train import train

__all__ = ["select_attn_implementation", "train"]

if __name__ == "__main__":
    train(attn_implementation=select_attn_implementation())
    exit_process()
