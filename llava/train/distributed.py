"""Process-group setup and rank queries for training.

Rank and world size are always read from the live distributed state (or, before the process group
exists, from the launcher's environment variables); nothing here caches them in module globals.

`init_distributed_state` exists because accelerate does not give DeepSpeed a distributed state on a
machine without CUDA: transformers' `TrainingArguments` then builds a non-DeepSpeed state, computes
`world_size` 1 for the DeepSpeed batch-size check and the run dies with "train_batch_size is not equal
to micro_batch_per_gpu * gradient_acc_step * world_size 2 != 2 * 1 * 2". Creating accelerate's
`PartialState` over gloo ourselves, while `ACCELERATE_USE_DEEPSPEED=true`, and asking
`TrainingArguments` to reuse it, makes ZeRO-2/3 train on CPU processes (tests and laptops).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

CPU_BACKEND = "gloo"
USE_CONFIGURED_STATE = {"use_configured_state": True}
"""`TrainingArguments.accelerator_config` that makes transformers reuse the state built here."""

# What a launcher (`deepspeed`, `torchrun`, `accelerate launch`) exports for each worker. A plain
# `python train.py --deepspeed ...` on CPU gets the one-process equivalent.
_LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_LOCALHOST = "127.0.0.1"


def init_distributed_state(deepspeed_config: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Prepare the process for DeepSpeed before `TrainingArguments` is built.

    Call this before parsing or constructing `TrainingArguments` (its `__post_init__` already needs
    the world size). On a machine with CUDA, or without a DeepSpeed config, it does nothing and
    returns `{}`. Otherwise it creates accelerate's `PartialState(backend="gloo")` as a DeepSpeed
    state and returns the extra `TrainingArguments` keyword arguments the caller must pass:
    `{"accelerator_config": {"use_configured_state": True}}` (on the command line:
    `--accelerator_config '{"use_configured_state": true}'`).

    Args:
        deepspeed_config: the value of `--deepspeed` (a JSON file path or a dict), or None.

    Returns:
        Extra keyword arguments for `TrainingArguments`.
    """
    if not deepspeed_config or torch.cuda.is_available():
        return {}

    from accelerate import PartialState

    if PartialState._shared_state:
        # Someone (a previous call, a test, the user) already built the state; building a second
        # one is a no-op in accelerate, so only check that it is the kind TrainingArguments needs.
        from accelerate.utils import DistributedType

        if PartialState().distributed_type != DistributedType.DEEPSPEED:
            raise RuntimeError(
                "An accelerate PartialState without DeepSpeed already exists in this process; "
                "call init_distributed_state() before anything else creates one."
            )
        return {"accelerator_config": dict(USE_CONFIGURED_STATE)}

    _fill_single_process_env()
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        state = PartialState(backend=CPU_BACKEND)
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    logger.info(
        "No CUDA device: DeepSpeed runs on CPU over %s (rank %d of %d)",
        CPU_BACKEND,
        state.process_index,
        state.num_processes,
    )
    return {"accelerator_config": dict(USE_CONFIGURED_STATE)}


def _fill_single_process_env() -> None:
    """Export a one-process world when no launcher did, so `python train.py --deepspeed` works."""
    if "LOCAL_RANK" in os.environ:
        return
    defaults = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": _LOCALHOST,
        "MASTER_PORT": str(_free_port()),
    }
    for key in _LAUNCHER_ENV:
        os.environ.setdefault(key, defaults[key])
    logger.info("No launcher environment found: running DeepSpeed as a single process")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        return sock.getsockname()[1]


def get_rank() -> int:
    """Global rank of this process: 0 when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    """Number of processes in the job: 1 when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on the process that writes files and logs for the whole job (global rank 0)."""
    return get_rank() == 0


def is_zero3_enabled() -> bool:
    """True when the `TrainingArguments` in use carry a ZeRO stage-3 DeepSpeed config."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()
