"""Worker script: QLoRA (4-bit NF4 with double quantization, or 8-bit) under ZeRO-3 on CPU processes, through
the product's own path (docs/qlora_zero3.md): llava.train's TrainingArguments and `setup_distributed`, its
quantization settings (`quantization_kwargs`), k-bit preparation, `add_lora` and `cast_kbit_modules`, and
`LLaVATrainer`.

    deepspeed --num_gpus 2 qlora_zero3_smoke.py MODEL_DIR OUT_DIR [--bits 4|8] [--dtype float32|bfloat16]
        [--keep-cpu-repacking]

Each rank writes OUT_DIR/rank<r>.pt: losses, the partition layout of every quantized weight, whether
the gathered quantized storage is byte-identical to what was loaded, how LoRA / projector weights
moved, whether eval-mode forwards agree with a train-mode forward, and (8-bit) how many int8
elements bitsandbytes still holds outside the partitioned parameters.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import deepspeed
import torch
import transformers

from dist_scripts.tiny_peft import RandomTokens, attach_projector
from llava.distributed.state import exit_process, get_rank
from llava.distributed.zero3 import disable_4bit_cpu_repacking, gather_to_cpu, get_peft_state_maybe_zero_3
from llava.train.arguments import TrainingArguments
from llava.train.llava_trainer import LLaVATrainer
from llava.train.lora import add_lora, cast_kbit_modules, prepare_for_kbit_training
from llava.train.model_setup import quantization_kwargs

ZERO3_CONFIG = {
    "bf16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
}
QUANTIZED_CLASSES = ("Params4bit", "Int8Params")
# Two ranks x 2 sequences = the whole 4-sequence data set every step: the loss must go down.
NUM_SEQUENCES = 4
MAX_STEPS = 6
LORA_RANK = 4


def quantized_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: param for name, param in model.named_parameters() if type(param).__name__ in QUANTIZED_CLASSES}


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    # Packed 4-bit storage read as floats contains NaN bit patterns, so compare bytes, not values.
    return tensor.detach().reshape(-1).view(torch.uint8)


def int8_elements_outside_partition(model: torch.nn.Module) -> int:
    """Elements of int8 weights bitsandbytes keeps in `weight.CB` / `state.CB`, beside the parameter."""
    held = 0
    for module in model.modules():
        weight, state = getattr(module, "weight", None), getattr(module, "state", None)
        for copy in (getattr(weight, "CB", None), getattr(state, "CB", None)):
            if copy is not None and copy is not weight:
                held += copy.numel()
    return held


def no_grad_logits(model: torch.nn.Module, mode: str, input_ids: torch.Tensor) -> torch.Tensor:
    model.train(mode == "train")
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--keep-cpu-repacking", action="store_true", help="skip step 4, to show what goes wrong without it"
    )
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    # 1. The DeepSpeed state and the training arguments exist before the model is loaded.
    training_args = TrainingArguments(
        output_dir=str(Path(args.out_dir) / "trainer"),
        deepspeed=ZERO3_CONFIG,
        bf16=dtype == torch.bfloat16,
        bits=args.bits,
        lora_enable=True,
        lora_r=LORA_RANK,
        lora_alpha=2 * LORA_RANK,
        lora_dropout=0.0,
        per_device_train_batch_size=2,
        max_steps=MAX_STEPS,
        learning_rate=2e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        gradient_checkpointing=True,
    )
    training_args.setup_distributed()
    # 2. The product's quantization settings: no device_map under ZeRO-3, 4-bit storage in the training dtype.
    #    transformers skips zero.Init for quantized models, so every rank loads the whole quantized model; the
    #    Trainer's deepspeed.initialize partitions it.
    model = transformers.LlamaForCausalLM.from_pretrained(
        args.model_dir, dtype=dtype, **quantization_kwargs(training_args)
    )
    # 3. As training does: k-bit preparation, then LoRA, then the dtypes of the LoRA layers and norms. A test
    #    projector is attached after LoRA (as LLaVA's vision modules are), trainable and not quantized.
    model = prepare_for_kbit_training(model, training_args)
    model = add_lora(model, training_args)
    attach_projector(model)
    cast_kbit_modules(model, training_args)
    model.get_base_model().model.mm_projector.to(dtype)
    loaded = {name: as_bytes(param).clone() for name, param in quantized_params(model).items()}
    # 4. CPU only: keep bitsandbytes from repacking partitioned 4-bit weights in eval mode (as load_model does).
    repacking_disabled = 0 if args.keep_cpu_repacking else disable_4bit_cpu_repacking(model)
    trainable_before = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}

    trainer = LLaVATrainer(model=model, args=training_args, train_dataset=RandomTokens(size=NUM_SEQUENCES))
    trainer.train()

    quantized = quantized_params(model)
    record = {
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "repacking_disabled": repacking_disabled,
        "quantized_layout": {
            name: (param.numel(), getattr(param, "ds_numel", -1), param.ds_tensor.numel(), loaded[name].numel())
            for name, param in quantized.items()
        },
        "int8_elements_outside_partition": int8_elements_outside_partition(model),
    }
    gathered = gather_to_cpu((name, param) for name, param in model.named_parameters() if name in quantized)
    record["quantized_bytes_equal"] = {name: torch.equal(as_bytes(gathered[name]), loaded[name]) for name in quantized}
    adapter = get_peft_state_maybe_zero_3(model.named_parameters(), "none")
    trainable_after = gather_to_cpu((name, param) for name, param in model.named_parameters() if param.requires_grad)
    record["adapter_shapes"] = {name: tuple(value.shape) for name, value in adapter.items()}
    record["trainable_changed"] = {
        name: not torch.equal(trainable_after[name], before) for name, before in trainable_before.items()
    }
    # Eval-mode forwards must agree with a train-mode forward, also after every parameter went
    # through a gather/partition cycle (as at each checkpoint save): bitsandbytes' CPU repacking
    # breaks exactly that.
    input_ids = torch.arange(16).view(1, 16)
    reference = no_grad_logits(model, "train", input_ids)
    diffs = [no_grad_logits(model, mode, input_ids) for mode in ("eval", "eval")]
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        pass
    diffs += [no_grad_logits(model, mode, input_ids) for mode in ("eval", "train")]
    record["eval_max_abs_diff"] = [(logits - reference).abs().max().item() for logits in diffs]
    torch.save(record, Path(args.out_dir) / f"rank{get_rank()}.pt")


if __name__ == "__main__":
    main()
    exit_process()
