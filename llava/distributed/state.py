"""Process-group setup and rank queries for training.

Rank and world size are always read from the live distributed state (or, before the process group
exists, from the launcher's environment variables); nothing here caches them in module globals.

`init_distributed_state` exists because on a machine without CUDA, transformers'
`TrainingArguments` asks accelerate for a DeepSpeed state without naming a backend; accelerate finds
none, treats the process as not distributed, and the DeepSpeed batch-size check (sized for a world
of 1) kills every rank: "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step *
world_size 2 != 2 * 1 * 2". Creating accelerate's `PartialState` over gloo ourselves, while
`ACCELERATE_USE_DEEPSPEED=true`, and asking `TrainingArguments` to reuse it, makes ZeRO-2/3 train
on CPU processes (tests, laptops). See docs/qlora_zero3.md.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import socket
import sys
import warnings
from collections.abc import Mapping
from typing import Any, NoReturn

import torch

from llava.distributed import hygiene

logger = logging.getLogger(__name__)

CPU_BACKEND = "gloo"
CPU_TRAINING_ARGS: dict[str, Any] = {
    # Makes transformers reuse the DeepSpeed state built here instead of building its own.
    "accelerator_config": {"use_configured_state": True},
    # Without it `--bf16 True` (upstream's scripts) fails on CPU with "Your setup doesn't support
    # bf16/gpu. You need to assign use_cpu if you want to train the model on CPU."
    "use_cpu": True,
}
"""Extra `TrainingArguments` keyword arguments for DeepSpeed on a machine without CUDA."""

# What a launcher (`deepspeed`, `torchrun`, `accelerate launch`) exports for each worker. A plain
# `python train.py --deepspeed ...` on CPU gets the one-process equivalent.
_LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_LOCALHOST = "127.0.0.1"
# What a launcher exports for the index of the node a worker runs on: torchrun, then DeepSpeed's launcher.
_NODE_RANK_ENV = ("GROUP_RANK", "CROSS_RANK")


def init_distributed_state(deepspeed_config: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Prepare the process for DeepSpeed before `TrainingArguments` is built.

    Call this before parsing or constructing `TrainingArguments` (its `__post_init__` already needs
    the world size). On a machine with CUDA, or without a DeepSpeed config, it does nothing and
    returns `{}`. Otherwise it creates accelerate's `PartialState(backend="gloo")` as a DeepSpeed
    state and returns the extra `TrainingArguments` keyword arguments the caller must pass:
    `{"accelerator_config": {"use_configured_state": True}, "use_cpu": True}` (on the command line:
    `--accelerator_config '{"use_configured_state": true}' --use_cpu True`).

    Args:
        deepspeed_config: the value of `--deepspeed` (a JSON file path or a dict), or None.

    Returns:
        Extra keyword arguments for `TrainingArguments`.
    """
    if not deepspeed_config:
        return {}
    hygiene.remove_stale_build_locks()
    if torch.cuda.is_available():
        return {}

    from accelerate import PartialState

    # `_shared_state` is how transformers itself tests for an existing state (training_args.py).
    if PartialState._shared_state:
        # Someone (a previous call, a test, the user) already built the state; building a second
        # one is a no-op in accelerate, so only check that it is the kind TrainingArguments needs.
        from accelerate.utils import DistributedType

        if PartialState().distributed_type != DistributedType.DEEPSPEED:
            raise RuntimeError(
                "An accelerate PartialState without DeepSpeed already exists in this process; "
                "call init_distributed_state() before anything else creates one."
            )
        return copy.deepcopy(CPU_TRAINING_ARGS)

    _fill_single_process_env()
    hygiene.remove_orphaned_shm_segments()  # left by earlier jobs, ours or not
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        state = PartialState(backend=CPU_BACKEND)
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    _release_shm_segments(state.process_index)
    logger.info(
        "No CUDA device: DeepSpeed runs on CPU over %s (rank %d of %d)",
        CPU_BACKEND,
        state.process_index,
        state.num_processes,
    )
    return copy.deepcopy(CPU_TRAINING_ARGS)


def silence_deepspeed_deprecations() -> None:
    """DeepSpeed 0.19's ZeRO-3 calls `torch.distributed.all_gather_into_tensor` and `reduce_scatter_tensor`, which
    torch 2.13 deprecates with a FutureWarning from every rank at every gather; nothing a user can act on."""
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
        category=FutureWarning,
    )


def _release_shm_segments(rank: int) -> None:
    """Unlink this rank's DeepSpeed shared-memory segment once every rank has mapped every segment.

    DeepSpeed maps all ranks' segments while it initialises and never unlinks them; the barrier makes sure
    all ranks are past that point, after which the names are no longer needed (see `llava.distributed.hygiene`).
    """
    port = os.environ.get("MASTER_PORT")
    if port is None:  # DeepSpeed names its segments after MASTER_PORT: without it, it made none
        return
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    hygiene.unlink_shm_segments(port, os.environ.get("MASTER_ADDR"), rank=rank)


def _fill_single_process_env() -> None:
    """Export a one-process world when no launcher did, so `python train.py --deepspeed` works."""
    if "LOCAL_RANK" in os.environ:
        return
    defaults = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": _LOCALHOST,
        "MASTER_PORT": str(free_port()),
    }
    for key in _LAUNCHER_ENV:
        os.environ.setdefault(key, defaults[key])
    logger.info("No launcher environment found: running DeepSpeed as a single process")


def free_port() -> int:
    """A TCP port that is free right now on localhost (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        return sock.getsockname()[1]


def shutdown() -> None:
    """Tear the process group down in step: wait for every rank (rank 0 may still be writing files), then destroy it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def exit_process(code: int = 0) -> NoReturn:
    """End an entry point that finished its work: `shutdown()`, the interpreter's exit handlers, flushed streams, then
    `os._exit(code)`, which skips the C++ teardown of torch's and DeepSpeed's communication threads.

    Left to a normal interpreter exit, a finished 2-process CPU worker now and then aborted in one of those background
    threads while the interpreter was finalising ("terminate called without an active exception", then "Fatal Python
    error: Aborted" with no Python frame), failing a job whose files were all written (docs/upstream_differences.md,
    "Facts"). Exit handlers still run (`atexit`: logging, wandb, tempfile cleanup), so nothing a user sees changes.
    """
    shutdown()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing left to flush into
                pass
        os._exit(code)


def gather_objects(item: Any) -> list:
    """Every rank's ``item`` (picklable), in rank order, on every rank: ``[item]`` outside a multi-process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [item]
    if torch.distributed.get_world_size() == 1:
        return [item]
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, item)
    return gathered


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


def get_node_rank() -> int:
    """Index of this process's node in the job, as the launcher tells it: torchrun exports ``GROUP_RANK``,
    DeepSpeed's launcher (with or without ssh) ``CROSS_RANK``. A launcher that exports neither (``accelerate launch``,
    a hand-rolled one) gets the global rank of the node's first process, ``RANK - LOCAL_RANK``: unique per node, as
    every launcher gives the processes of a node consecutive ranks. 0 outside a distributed job.

    Per-node resources (the record store of `llava.data.store`) are named after it, so nodes whose temp folders are
    the same folder (one machine running several launchers, or a shared ``/tmp``) never collide."""
    for name in _NODE_RANK_ENV:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    if "LOCAL_RANK" in os.environ:
        return get_rank() - int(os.environ["LOCAL_RANK"])
    return 0


def is_main_process() -> bool:
    """True on the process that writes files and logs for the whole job (global rank 0)."""
    return get_rank() == 0


def is_zero3_enabled() -> bool:
    """True when the `TrainingArguments` in use carry a ZeRO stage-3 DeepSpeed config."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()
