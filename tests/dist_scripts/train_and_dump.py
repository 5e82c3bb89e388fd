"""Worker script: `llava/train/train_mem.py` exactly (same arguments), then a record of the trained model.

    deepspeed --num_gpus 2 train_and_dump.py <train_mem.py arguments>

After training, every rank gathers the model's parameters (a collective) and rank 0 writes, into the folder named
by the environment variable LLAVA_TEST_DUMP_DIR (kept apart from output_dir, whose file set the tests check):
- `gathered.pt`: every parameter at the end of training, full shapes, as named by `model.named_parameters()`;
- `record.json`: the optimizer's parameter groups (initial lr, weight decay) and, for a few parameters, their
  ZeRO-3 layout (local element count, full shape), which shows they really were partitioned; every rank's number
  of training samples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llava.distributed.state import exit_process
from llava.distributed.zero3 import gather_to_cpu
from llava.train.train import train
from llava.train.train_mem import select_attn_implementation

DUMP_DIR_ENV = "LLAVA_TEST_DUMP_DIR"
LAYOUT_OF = ("lora_A", "mm_projector.0.weight", "patch_embedding.weight", "q_proj.base_layer.weight")
# (LoRA, projector, vision tower, a quantizable base weight)


def main() -> None:
    trainer = train(attn_implementation=select_attn_implementation())
    named = list(trainer.model.named_parameters())
    gathered = gather_to_cpu(named)
    layout = {
        name: {"local_numel": param.numel(), "full_shape": list(getattr(param, "ds_shape", param.shape))}
        for name, param in named
        if any(part in name for part in LAYOUT_OF)
    }
    groups = [
        {"initial_lr": group.get("initial_lr", group["lr"]), "weight_decay": group["weight_decay"]}
        for group in _torch_optimizer(trainer.optimizer).param_groups
    ]
    # Every rank's training set size, to show that the ranks dropped the same invalid samples.
    sizes = [len(trainer.train_dataset)] * trainer.args.world_size
    if torch.distributed.is_initialized():
        torch.distributed.all_gather_object(sizes, len(trainer.train_dataset))
    if trainer.args.should_save:
        dump_dir = Path(os.environ[DUMP_DIR_ENV])
        dump_dir.mkdir(parents=True, exist_ok=True)
        torch.save(gathered, dump_dir / "gathered.pt")
        record = {
            "param_groups": groups,
            "layout": layout,
            "world_size": trainer.args.world_size,
            "train_samples": sizes,
        }
        (dump_dir / "record.json").write_text(json.dumps(record, indent=1))


def _torch_optimizer(optimizer):
    """The torch optimizer inside accelerate's and DeepSpeed's wrappers (its groups keep lr and weight decay)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


if __name__ == "__main__":
    main()
    exit_process()
