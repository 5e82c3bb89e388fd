"""Worker for bench_zero3_save.py, started by `deepspeed --num_gpus 2`: gathers and writes LoRA + projector state of
LLaVA-7B-shaped layers partitioned by ZeRO-3, three ways: our helpers as they are ("ours"), our helpers with one
context per tensor ("ours_per_tensor", `bucket_bytes=0`), and upstream's `maybe_zero_3` loop ("upstream": one
`GatheredParameters` context per tensor, then `.cpu().clone()` of what it gathered).

Only the trainable tensors exist (LoRA A/B of every linear, and the projector): they are what a LoRA save gathers;
the frozen base weights are never gathered by it, so they are left out to fit the machine.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch import nn

from llava.distributed.state import exit_process

HIDDEN, INTERMEDIATE, RANK, VISION_HIDDEN = 4096, 11008, 128, 1024
PROJECTIONS = {  # name: (in_features, out_features)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN), "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (HIDDEN, INTERMEDIATE),
    "mlp.up_proj": (HIDDEN, INTERMEDIATE), "mlp.down_proj": (INTERMEDIATE, HIDDEN),
}  # fmt: skip


class LoraLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.lora_A = nn.ModuleDict({"default": nn.Linear(in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(rank, out_features, bias=False)})


class Layer(nn.Module):
    def __init__(self, scale: int):
        super().__init__()
        self.self_attn, self.mlp = nn.Module(), nn.Module()
        for name, (fan_in, fan_out) in PROJECTIONS.items():
            block, leaf = name.split(".")
            getattr(self, block).add_module(leaf, LoraLinear(fan_in // scale, fan_out // scale, RANK // scale))


def upstream_state(named: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What upstream's get_peft_state_maybe_zero_3 / get_peft_state_non_lora_maybe_zero_3 do per tensor."""
    from deepspeed import zero

    state = {}
    for name, param in named:
        with zero.GatheredParameters([param]):
            state[name] = param.data.detach().cpu().clone()
    return state


def main() -> None:
    import deepspeed

    from llava.distributed.zero3 import get_peft_state_maybe_zero_3, get_peft_state_non_lora_maybe_zero_3

    # The deepspeed launcher adds --local_rank=<i>.
    layers, scale, repeat, out_path = [arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")]
    layers, scale, repeat = int(layers), int(scale), int(repeat)
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
    config = {"train_batch_size": dist.get_world_size(),
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}  # fmt: skip
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = nn.Module()
        model.layers = nn.ModuleList([Layer(scale) for _ in range(layers)])
        model.mm_projector = nn.Sequential(
            nn.Linear(VISION_HIDDEN // scale, HIDDEN // scale), nn.GELU(), nn.Linear(HIDDEN // scale, HIDDEN // scale)
        )
    named = [(f"base_model.model.model.{name}", param) for name, param in model.named_parameters()]
    assert all(param.numel() == 0 for _, param in named), "every tensor should be partitioned"
    variants = {
        "ours": lambda: (get_peft_state_maybe_zero_3(named, "none"), get_peft_state_non_lora_maybe_zero_3(named)),
        "ours_per_tensor": lambda: (
            get_peft_state_maybe_zero_3(named, "none", bucket_bytes=0),
            get_peft_state_non_lora_maybe_zero_3(named, bucket_bytes=0),
        ),
        "upstream": lambda: (
            upstream_state([(k, p) for k, p in named if "lora_" in k]),
            upstream_state([(k, p) for k, p in named if "lora_" not in k and p.requires_grad]),
        ),
    }
    times = {label: {"gather": [], "total": []} for label in variants}
    with tempfile.TemporaryDirectory() as tmp:
        # Alternately, the first round a warm-up (allocations, gloo buffers): drift on a busy machine hits all alike.
        for attempt in range(repeat + 1):
            for label, gather in variants.items():
                dist.barrier()
                start = time.perf_counter()
                adapter, non_lora = gather()
                dist.barrier()
                gathered = time.perf_counter()
                if dist.get_rank() == 0:
                    torch.save(adapter, os.path.join(tmp, "adapter_model.bin"))
                    torch.save(non_lora, os.path.join(tmp, "non_lora_trainables.bin"))
                del adapter, non_lora
                dist.barrier()
                if attempt:
                    times[label]["gather"].append(gathered - start)
                    times[label]["total"].append(time.perf_counter() - start)
        # The least disturbed run of each: interference only ever adds time.
        results = {label: {kind: min(values) for kind, values in kinds.items()} for label, kinds in times.items()}
        results["tensors"] = len(named)
        results["bytes"] = sum(int(param.ds_numel) * param.element_size() for _, param in named)
    if dist.get_rank() == 0:
        with open(out_path, "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main()
    exit_process()
