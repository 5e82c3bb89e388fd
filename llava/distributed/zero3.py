"""Full-size CPU copies of (possibly ZeRO-3 partitioned) parameters, for saving.

This is the one module that gathers ZeRO-3 parameters; the trainer, the checkpoint code and
`llava.train.train` import from here. Under ZeRO-3 every rank holds only a slice of each
parameter (`param.shape` is `torch.Size([0])`, the slice is `param.ds_tensor`, the full size is
`param.ds_shape`). Gathering is a collective: every rank must call these helpers with the same
parameters in the same order, even though usually only rank 0 writes the result.

Small parameters are gathered in buckets: one `deepspeed.zero.GatheredParameters` context per
bucket of at most `bucket_bytes` (full-size) bytes, instead of upstream's one context per tensor,
which pays a collective's fixed cost per tensor (LoRA r 8 on every linear of a 7B Llama is 448
tensors of 0.1-0.4 MB). A parameter of `ALONE_BYTES` or more is gathered in a context of its own:
DeepSpeed's batched gather still runs one collective per parameter (launched together, then
awaited), so batching large tensors saves nothing and allocates every gather buffer of the bucket
at once, and one flat collective over the bucket is no faster either (on 2 CPU processes over gloo
a 64 MiB message moves at a quarter of the rate of a 1 MiB one; benchmarks/RESULTS.md has the
measurements). On CPU the gathered buffer itself becomes the returned tensor, where it holds exactly
that tensor: upstream copied every gathered tensor once more (`.cpu().clone()`), which on CPU costs
a fresh allocation and a pass over all the bytes. Parameters ZeRO-3 already holds whole (below
`stage3_param_persistence_threshold`, or inside an enclosing gather) are copied as they are:
upstream's per-tensor contexts re-partitioned them, so they had to be fetched again. Without ZeRO-3
(no `ds_id` on any parameter) nothing is gathered and deepspeed is not imported.

`disable_4bit_cpu_repacking` lives here too: it is what 4-bit weights need to survive ZeRO-3
partitioning on CPU (docs/qlora_zero3.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal

import torch

logger = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 256 * 2**20
"""Full-size bytes gathered per `GatheredParameters` context; 0 gathers one tensor at a time."""

ALONE_BYTES = 2**20
"""A parameter this large (full-size bytes) or larger is gathered alone: past about 1 MB a gather is bound by
bandwidth, not by the collective's fixed cost (measured on 2 CPU ranks over gloo: 0.5 ms fixed, about 1 GB/s), so
grouping gains nothing."""

LORA_MARKER = "lora_"
"""PEFT names every LoRA tensor `<module>.lora_<A|B|embedding_A|...>.<adapter>...`."""

BIAS_NAME = "bias"
BIAS_SUFFIX = "." + BIAS_NAME
BASE_LAYER_SUFFIX = ".base_layer"
"""PEFT moves the wrapped layer to `<module>.base_layer`, so its bias is `<module>.base_layer.bias`."""

_BNB_CPU_PACKING_FLAG = "support_avx512bf16_for_cpu"

LoraBias = Literal["none", "all", "lora_only"]
NamedParams = Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]


def maybe_zero_3(param: torch.Tensor, ignore_status: bool = False, name: str | None = None) -> torch.Tensor:
    """Return a detached CPU copy of `param` with its full shape, gathering it if ZeRO-3 partitioned.

    Args:
        param: a parameter or tensor; under ZeRO-3 all ranks must call this together.
        ignore_status: when False, log a warning if the parameter is being gathered by someone else
            right now (ZeRO status INFLIGHT), which means it is used outside the usual save points.
        name: the parameter's name, used in that warning.
    """
    label = name if name is not None else "param"
    return _gather_to_cpu({label: param}, DEFAULT_BUCKET_BYTES, warn_inflight=not ignore_status)[label]


def gather_to_cpu(named_params: NamedParams, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> dict[str, torch.Tensor]:
    """Detached full-shape CPU copies of all given parameters, keys and order unchanged.

    Args:
        named_params: `(name, tensor)` pairs (e.g. `model.named_parameters()`) or a mapping.
        bucket_bytes: full-size bytes gathered per `GatheredParameters` context; 0 gathers each
            tensor on its own (upstream's behaviour, kept as a baseline for benchmarks).
    """
    return _gather_to_cpu(_as_dict(named_params), bucket_bytes, warn_inflight=False)


def get_peft_state_maybe_zero_3(
    named_params: NamedParams, bias: LoraBias, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> dict[str, torch.Tensor]:
    """The LoRA tensors (and biases, per `bias`) of a PEFT model as full CPU tensors.

    Keys are exactly the given names, adapter name included
    (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`); pass the result to
    `PeftModel.save_pretrained(dir, state_dict=...)`, which strips the adapter name.

    Args:
        named_params: `model.named_parameters()` of the PEFT model.
        bias: "none": LoRA tensors only; "all": plus every `*.bias`; "lora_only": plus the bias of
            each module that carries LoRA (upstream crashed here, docs/upstream_differences.md #7).
        bucket_bytes: see `gather_to_cpu`.
    """
    named = _as_dict(named_params)
    lora = {k: t for k, t in named.items() if LORA_MARKER in k}
    if bias == "none":
        selected = lora
    elif bias == "all":
        selected = {k: t for k, t in named.items() if k in lora or _is_bias(k)}
    elif bias == "lora_only":
        # upstream iterated a dict as (key, value) pairs and crashed (docs/upstream_differences.md #7); it also looked for
        # `<module>.bias`, which PEFT >= 0.7 renamed to `<module>.base_layer.bias`.
        lora_modules = {_lora_module(k) for k in lora}
        selected = {k: t for k, t in named.items() if k in lora or (_is_bias(k) and _bias_owner(k) in lora_modules)}
    else:
        raise ValueError(f"lora_bias must be one of 'none', 'all', 'lora_only'; got {bias!r}.")
    return _gather_to_cpu(selected, bucket_bytes, warn_inflight=False)


def get_peft_state_non_lora_maybe_zero_3(
    named_params: NamedParams, require_grad_only: bool = True, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> dict[str, torch.Tensor]:
    """Every non-LoRA tensor (by default only the trainable ones, e.g. `mm_projector`) as full CPU tensors.

    This is what `non_lora_trainables.bin` holds; keys are exactly the given names.
    """
    selected = {
        k: t
        for k, t in _as_dict(named_params).items()
        if LORA_MARKER not in k and (t.requires_grad or not require_grad_only)
    }
    return _gather_to_cpu(selected, bucket_bytes, warn_inflight=False)


def get_mm_adapter_state_maybe_zero_3(
    named_params: NamedParams, keys_to_match: Sequence[str], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> dict[str, torch.Tensor]:
    """Tensors whose name contains any of `keys_to_match` (e.g. `["mm_projector"]`) as full CPU tensors.

    This is what `mm_projector.bin` holds; keys are exactly the given names.
    """
    selected = {k: t for k, t in _as_dict(named_params).items() if any(key in k for key in keys_to_match)}
    return _gather_to_cpu(selected, bucket_bytes, warn_inflight=False)


def disable_4bit_cpu_repacking(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights on CPU; required when ZeRO-3 partitions them.

    On CPUs with AVX512-BF16, `bnb.nn.Linear4bit.forward` in eval mode without grad (evaluation,
    generation) replaces `weight.data` by a CPU-packed layout once and flags its quant state. Under
    ZeRO-3 that replacement is thrown away when the parameter is re-partitioned, the next gather
    returns the original layout while the quant state still says "packed", and every later forward
    is silently wrong (see docs/qlora_zero3.md). Returns how many modules were changed.
    """
    changed = 0
    for module in model.modules():
        # The attribute only exists on bitsandbytes' Linear4bit; checking it avoids importing bnb.
        if getattr(module, _BNB_CPU_PACKING_FLAG, False):
            setattr(module, _BNB_CPU_PACKING_FLAG, False)
            changed += 1
    return changed


def _as_dict(named_params: NamedParams) -> dict[str, torch.Tensor]:
    # dict() accepts both a mapping and an iterable of pairs; a generator is consumed once here.
    return dict(named_params)


def _is_bias(name: str) -> bool:
    return name == BIAS_NAME or name.endswith(BIAS_SUFFIX)


def _lora_module(lora_name: str) -> str:
    """`a.q_proj.lora_A.default.weight` -> `a.q_proj`: the module that carries the LoRA tensor."""
    return lora_name.partition("." + LORA_MARKER)[0]


def _bias_owner(bias_name: str) -> str:
    """`a.q_proj.base_layer.bias` (PEFT layout) or `a.q_proj.bias` -> `a.q_proj`."""
    return bias_name.removesuffix(BIAS_SUFFIX).removesuffix(BASE_LAYER_SUFFIX)


def _is_partitioned(tensor: torch.Tensor) -> bool:
    # The attribute deepspeed.zero.Init / ZeRO-3 conversion attaches to every parameter it manages;
    # checking it needs no deepspeed import.
    return hasattr(tensor, "ds_id")


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", copy=True)


def _gather_to_cpu(named: dict[str, torch.Tensor], bucket_bytes: int, warn_inflight: bool) -> dict[str, torch.Tensor]:
    """The single implementation behind every public helper: copy local tensors, gather ZeRO-3 ones."""
    if bucket_bytes < 0:
        raise ValueError(f"bucket_bytes must be >= 0 (0 gathers one tensor at a time); got {bucket_bytes}.")
    if not any(_is_partitioned(t) for t in named.values()):
        return {k: _cpu_copy(t) for k, t in named.items()}

    from deepspeed import zero
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    copies: dict[str, torch.Tensor] = {}
    to_gather: list[tuple[str, torch.Tensor]] = []
    for name, tensor in named.items():
        status = getattr(tensor, "ds_status", None)
        if not _is_partitioned(tensor) or status == ZeroParamStatus.AVAILABLE:
            # Already whole on every rank (persistent small parameters, or inside an enclosing
            # GatheredParameters); re-gathering would repartition (free) it on exit.
            copies[name] = _cpu_copy(tensor)
            continue
        if warn_inflight and status == ZeroParamStatus.INFLIGHT:
            logger.warning("%s: ZeRO-3 parameter is being gathered elsewhere (status %s)", name, status)
        to_gather.append((name, tensor))

    # Sizes from `ds_numel` (the full element count) are identical on every rank, so every rank plans the same
    # buckets in the same order and the collectives line up.
    sizes = [tensor.ds_numel * tensor.element_size() for _, tensor in to_gather]
    for bucket in plan_buckets(sizes, bucket_bytes):
        members = [to_gather[index] for index in bucket]
        with zero.GatheredParameters([tensor for _, tensor in members]):
            for name, tensor in members:
                copies[name] = _take_gathered(tensor)
    return {name: copies[name] for name in named}


def plan_buckets(sizes: Sequence[int], bucket_bytes: int, alone_bytes: int = ALONE_BYTES) -> list[list[int]]:
    """Which tensors (indices into `sizes`, their full sizes in bytes) share a gather, in the order the gathers run.

    A tensor of at least `alone_bytes` is gathered alone, at once. Smaller ones fill a bucket in order until the
    next would take it past `bucket_bytes`; a bucket is gathered when it is full, and the last one at the end.
    `bucket_bytes` 0 gathers every tensor alone (upstream's way).
    """
    plan: list[list[int]] = []
    bucket: list[int] = []
    used = 0
    for index, nbytes in enumerate(sizes):
        if nbytes >= alone_bytes or bucket_bytes == 0:
            plan.append([index])
            continue
        if bucket and used + nbytes > bucket_bytes:
            plan.append(bucket)
            bucket, used = [], 0
        bucket.append(index)
        used += nbytes
    if bucket:
        plan.append(bucket)
    return plan


def _take_gathered(param: torch.Tensor) -> torch.Tensor:
    """The full CPU tensor of a parameter inside the `GatheredParameters` context that gathered it.

    On CPU DeepSpeed gathers each parameter into a fresh buffer of its own and drops it when it re-partitions the
    parameter, so the buffer can be returned as it is. It is copied where it holds more than this tensor (a
    partition padded to a multiple of the world size) or is the rank's own partition (world size 1), and on an
    accelerator, where the copy to CPU is needed anyway.
    """
    data = param.data
    storage = data.untyped_storage()
    owned = (
        data.device.type == "cpu"
        and data.storage_offset() == 0
        and storage.nbytes() == data.numel() * data.element_size()
        and getattr(param, "ds_tensor", None) is not None
        and storage.data_ptr() != param.ds_tensor.untyped_storage().data_ptr()
    )
    return data.detach() if owned else _cpu_copy(data)


@contextlib.contextmanager
def gathered_for_modification(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside, ZeRO-3 partitioned ``params`` are whole; what rank 0 writes to them is kept when they are
    re-partitioned on exit. All ranks must enter together. Without ZeRO-3 this does nothing.

    For loading weights into an already partitioned model (e.g. a pretrained projector).
    """
    partitioned = [param for param in params if hasattr(param, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield
