"""Worker script: ZeRO-3 gather helpers on a fully partitioned tiny Llama + LoRA + mm_projector.

Launched by tests/test_zero3.py as
`deepspeed --num_gpus 2 zero3_gather.py MODEL_DIR OUT_DIR --persistence-threshold 0|auto`.
Each rank writes OUT_DIR/rank<r>.pt with what the helpers returned (before and after a few
training steps), reference copies gathered one tensor at a time with raw `GatheredParameters`,
the partition layout and how many parameters each `GatheredParameters` context received.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import deepspeed
import torch
import transformers
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

from dist_scripts.tiny_peft import RandomTokens, add_lora_and_projector
from llava.distributed import hygiene
from llava.distributed.state import exit_process, get_rank, init_distributed_state, is_zero3_enabled
from llava.distributed.zero3 import (
    get_mm_adapter_state_maybe_zero_3,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
    maybe_zero_3,
)

# Small enough that the tiny model's tensors fall into several buckets.
SMALL_BUCKET_BYTES = 4096


def zero3_config(persistence_threshold: int | str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        # 0: partition every tensor, however small, so that every helper really gathers.
        # "auto" (upstream's zero3.json): tensors up to 10 x hidden size stay whole on every rank.
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": persistence_threshold},
    }


class CountingGatheredParameters(deepspeed.zero.GatheredParameters):
    """deepspeed's own context, unchanged, that also records how many parameters each use received."""

    sizes: list[int] = []

    def __init__(self, params, *args, **kwargs):
        params = list(params)
        type(self).sizes.append(len(params))
        super().__init__(params, *args, **kwargs)


def all_helper_states(model: torch.nn.Module, bucket_bytes: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    extra = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
    states = {
        f"peft_{bias}": get_peft_state_maybe_zero_3(model.named_parameters(), bias, **extra)
        for bias in ("none", "all", "lora_only")
    }
    states["non_lora_trainable"] = get_peft_state_non_lora_maybe_zero_3(model.named_parameters(), **extra)
    states["non_lora_all"] = get_peft_state_non_lora_maybe_zero_3(
        model.named_parameters(), require_grad_only=False, **extra
    )
    states["mm_adapter"] = get_mm_adapter_state_maybe_zero_3(model.named_parameters(), ["mm_projector"], **extra)
    return states


def counted(fn, *args, **kwargs):
    """Run fn with GatheredParameters counting; return (result, sizes of each context)."""
    CountingGatheredParameters.sizes = []
    original = deepspeed.zero.GatheredParameters
    deepspeed.zero.GatheredParameters = CountingGatheredParameters
    try:
        result = fn(*args, **kwargs)
    finally:
        deepspeed.zero.GatheredParameters = original
    return result, list(CountingGatheredParameters.sizes)


def partition_layout(model: torch.nn.Module) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    """name -> (local numel, full numel, full shape); -1 / () when not a ZeRO-3 parameter."""
    return {
        name: (
            param.numel(),
            getattr(param, "ds_numel", -1),
            tuple(getattr(param, "ds_shape", ())),
        )
        for name, param in model.named_parameters()
    }


def available_names(model: torch.nn.Module) -> list[str]:
    """Parameters ZeRO-3 currently holds whole on this rank (persistent ones, between steps)."""
    return [name for name, param in model.named_parameters() if param.ds_status == ZeroParamStatus.AVAILABLE]


def one_by_one(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Reference: each parameter gathered in its own raw GatheredParameters context."""
    copies = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            copies[name] = param.data.detach().cpu().clone()
    return copies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument(
        "--persistence-threshold", default=0, type=lambda value: value if value == "auto" else int(value)
    )
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()

    config = zero3_config(args.persistence_threshold)
    extra_args = init_distributed_state(config)
    training_args = transformers.TrainingArguments(
        output_dir=str(Path(args.out_dir) / "trainer"),
        deepspeed=config,
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        **extra_args,
    )
    assert is_zero3_enabled(), "TrainingArguments with a stage-3 config must enable ZeRO-3"
    model = transformers.LlamaForCausalLM.from_pretrained(args.model_dir)
    peft_model = add_lora_and_projector(model)
    record = {"world_size": torch.distributed.get_world_size(), "layout_loaded": partition_layout(peft_model)}
    # DeepSpeed's CPU op mapped a shared-memory segment per rank; init_distributed_state unlinked them.
    record["shm_op_loaded"] = deepspeed.comm.comm.cdb.shm_comm_op is not None
    record["shm_segments_left"] = [path.name for path in hygiene.shm_segments(os.environ["MASTER_PORT"])]
    # Base weights are partitioned by from_pretrained; LoRA and projector are still whole here.
    record["before"] = all_helper_states(peft_model)
    record["maybe_zero_3_embed"] = maybe_zero_3(
        peft_model.get_base_model().model.embed_tokens.weight, name="embed_tokens.weight"
    )

    trainer = transformers.Trainer(model=peft_model, args=training_args, train_dataset=RandomTokens())
    trainer.train()
    record["losses"] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record["layout_trained"] = partition_layout(peft_model)
    record["available_before"] = available_names(peft_model)
    record["after"], record["sizes_default"] = counted(all_helper_states, peft_model)
    record["after_per_tensor"], record["sizes_per_tensor"] = counted(all_helper_states, peft_model, 0)
    record["after_small"], record["sizes_small"] = counted(all_helper_states, peft_model, SMALL_BUCKET_BYTES)
    # Persistent (whole) parameters must still be whole; the one-by-one reference below re-partitions them.
    record["available_after"] = available_names(peft_model)
    record["reference"] = one_by_one(peft_model)
    # Inside an enclosing gather the projector is already whole (AVAILABLE): the helper must copy it
    # as is; gathering it again would raise "Nested GatheredParameters contexts cannot overlap".
    projector = list(peft_model.get_base_model().model.mm_projector.parameters())
    with deepspeed.zero.GatheredParameters(projector):
        record["inside_gather"] = get_mm_adapter_state_maybe_zero_3(peft_model.named_parameters(), ["mm_projector"])
    # The helpers must leave every parameter partitioned again.
    record["layout_after_gather"] = partition_layout(peft_model)
    torch.save(record, Path(args.out_dir) / f"rank{get_rank()}.pt")


if __name__ == "__main__":
    main()
    exit_process()
