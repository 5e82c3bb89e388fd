"""Worker script: `python single_process_deepspeed.py MODEL_DIR OUT_DIR` with no launcher.

Checks that `init_distributed_state` lets a plain one-process run use a ZeRO-3 config on CPU, as
`python llava/train/train.py --deepspeed zero3.json` does, and writes OUT_DIR/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import transformers
from accelerate import PartialState
from accelerate.utils import DistributedType

from dist_scripts.tiny_peft import RandomTokens, add_lora_and_projector
from llava.distributed.state import (
    exit_process,
    get_rank,
    get_world_size,
    init_distributed_state,
    is_main_process,
    is_zero3_enabled,
)

ZERO3_CONFIG = {
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    args = parser.parse_args()

    launcher_env_before = "LOCAL_RANK" in os.environ
    extra_args = init_distributed_state(ZERO3_CONFIG)
    training_args = transformers.TrainingArguments(
        output_dir=str(Path(args.out_dir) / "trainer"),
        deepspeed=ZERO3_CONFIG,
        per_device_train_batch_size=2,
        max_steps=2,
        save_strategy="no",
        report_to=[],
        **extra_args,
    )
    model = add_lora_and_projector(transformers.LlamaForCausalLM.from_pretrained(args.model_dir))
    trainer = transformers.Trainer(model=model, args=training_args, train_dataset=RandomTokens())
    trainer.train()
    embed = model.get_base_model().model.embed_tokens.weight
    result = {
        "launcher_env_before": launcher_env_before,
        "extra_args": extra_args,
        "deepspeed_state": PartialState().distributed_type == DistributedType.DEEPSPEED,
        "zero3": is_zero3_enabled(),
        "rank": get_rank(),
        "world_size": get_world_size(),
        "main": is_main_process(),
        "embed_partitioned": hasattr(embed, "ds_id"),
        "global_step": trainer.state.global_step,
    }
    (Path(args.out_dir) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    exit_process()
