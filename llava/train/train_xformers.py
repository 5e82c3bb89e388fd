"""`deepspeed llava/train/train_xformers.py ...` (upstream's memory-efficient entry point, `scripts/pretrain_xformers.sh`):
`train()` with PyTorch's memory-efficient SDPA attention, which replaces upstream's xformers patch
(:mod:`llava.train.llama_xformers_attn_monkey_patch`)."""

from __future__ import annotations

from llava.distributed.state import exit_process
from llava.train.llama_xformers_attn_monkey_patch import replace_llama_attn_with_xformers_attn
from llava.train.train import train

__all__ = ["replace_llama_attn_with_xformers_attn", "train"]

if __name__ == "__main__":
    train(attn_implementation=replace_llama_attn_with_xformers_attn())
    exit_process()
