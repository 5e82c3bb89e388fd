"""Several LoRA runs over one copy of their base: ``load_lora_runs``.

A LLaVA LoRA run is two things over its base: the LoRA adapter (``adapter_model.*``) and the projector it trained
(``non_lora_trainables.bin``). Loaded here, the base's weights exist once; each run's adapter is a named PEFT adapter
(``run0``, ``run1``...) and each run's projector sits beside it in a :class:`RoutedProjector`. One batch may mix runs:
PEFT's ``adapter_names`` (one per row) picks each row's LoRA weights, and the projector's ``route`` (one name per
encoded image) picks each image's projector. Runs that change anything else of the base (added tokens, a trained
vision tower, another architecture) cannot share it and are refused with a message saying so.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llava.model import builder
from llava.model.added_tokens import split_added_rows
from llava.model.families import load_checkpoint_config
from llava.model.files import NON_LORA_TRAINABLES_FILE
from llava.model.hub import resolve_model_dir
from llava.model.llava_arch import add_image_tokens
from llava.model.state_files import load_state_file

logger = logging.getLogger(__name__)

ADAPTER_NAME_PREFIX = "run"
PROJECTOR_PREFIX = "model.mm_projector."
# What a run may carry besides its adapter and still share the base: its projector.
SHAREABLE_PREFIXES = (PROJECTOR_PREFIX,)
# Config fields that decide the model's structure or the image path: equal in every run that shares a base.
SHARED_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "mm_vision_tower",
    "mm_projector_type",
    "mm_hidden_size",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "mm_patch_merge_type",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
    "tokenizer_model_max_length",
    "max_position_embeddings",
)


class RoutedProjector(nn.Module):
    """One projector per run; ``route`` names the run of each image of the batch being encoded."""

    def __init__(self, projectors: dict[str, nn.Module]) -> None:
        super().__init__()
        self.projectors = nn.ModuleDict(projectors)
        self.route: list[str] | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        route = self.route
        if route is None or len(route) != features.shape[0]:
            raise RuntimeError(
                f"the projector got {features.shape[0]} images but a route for "
                f"{'none' if route is None else len(route)}: encode images inside routed_projectors(model, names)"
            )
        if len(set(route)) == 1:
            return self.projectors[route[0]](features)
        out: torch.Tensor | None = None
        for name in dict.fromkeys(route):
            rows = torch.tensor([index for index, each in enumerate(route) if each == name], device=features.device)
            projected = self.projectors[name](features[rows])
            if out is None:
                out = projected.new_empty((features.shape[0], *projected.shape[1:]))
            out[rows] = projected
        return out


@contextlib.contextmanager
def routed_projectors(model: nn.Module, route: Sequence[str]) -> Iterator[None]:
    """Encode the images inside the block with the projectors ``route`` names (one adapter name per image, in the
    order the model encodes them). A model without a RoutedProjector ignores it."""
    projector = getattr(model.get_model(), "mm_projector", None)
    if not isinstance(projector, RoutedProjector):
        yield
        return
    projector.route = list(route)
    try:
        yield
    finally:
        projector.route = None


@dataclass
class LoadedRuns:
    tokenizer: Any
    model: nn.Module  # a PeftModel holding one adapter per run
    image_processor: Any
    context_len: int
    adapter_names: list[str]  # one per run, in the order given


def load_lora_runs(
    model_paths: Sequence[str | PathLike[str]],
    model_base: str | PathLike[str],
    load_8bit: bool = False,
    load_4bit: bool = False,
    device: str = "cuda",
    use_flash_attn: bool = False,
    **kwargs: Any,
) -> LoadedRuns:
    """Load the LoRA runs ``model_paths`` (run folders or ``checkpoint-N``) over ONE copy of ``model_base``.

    Each run's answers, with its adapter name in ``adapter_names`` and its projector routed, are those of the run
    loaded alone by :func:`llava.model.builder.load_pretrained_model` (up to the rounding of an unmerged adapter).

    Raises:
        ValueError: a path is not a LoRA run; the runs differ in a config field of :data:`SHARED_FIELDS`; a run added
            tokens or trained its vision tower (its base is not shared: serve it in a worker of its own).
    """
    cache_dir = kwargs.pop("cache_dir", None)
    run_dirs = [resolve_model_dir(path, cache_dir=cache_dir, what="--model-path") for path in model_paths]
    base_dir = resolve_model_dir(model_base, cache_dir=cache_dir, what="--model-base")
    if len(set(run_dirs)) != len(run_dirs):
        raise ValueError(f"--model-path names a run twice: {[str(path) for path in run_dirs]}")
    base_config = load_checkpoint_config(base_dir)
    configs = [_run_config(run_dir, base_config) for run_dir in run_dirs]
    _check_shareable(run_dirs, configs)
    states = [_projector_state(run_dir) for run_dir in run_dirs]

    dtype = builder._resolve_dtype(kwargs, device)
    options = builder._from_pretrained_options(load_8bit, load_4bit, "auto", device, use_flash_attn, dtype, kwargs)
    logger.info("loading %d LoRA runs over one copy of %s", len(run_dirs), base_dir)
    model, missing = builder._load_base(base_dir, configs[0], base_config, options)
    non_lora_file = run_dirs[0] / NON_LORA_TRAINABLES_FILE
    builder._apply_state(model, states[0], non_lora_file, base_dir)
    still_missing = sorted(set(missing) - set(states[0]))
    if still_missing:
        raise ValueError(builder._missing_weights_message(base_dir, still_missing, non_lora_file))

    tokenizer = builder._load_tokenizer(run_dirs[0] if builder._has_tokenizer(run_dirs[0]) else base_dir)
    llava = builder._is_llava_config(model.config.to_dict())
    if llava:
        add_image_tokens(
            model,
            tokenizer,
            patch_token=getattr(model.config, "mm_use_im_patch_token", True),
            start_end=getattr(model.config, "mm_use_im_start_end", False),
        )
    adapter_names = [f"{ADAPTER_NAME_PREFIX}{index}" for index in range(len(run_dirs))]
    if llava:
        _route_projectors(model, adapter_names, states)
    # The tower is loaded after the adapters: its linears share leaf names with the language model's (q_proj...),
    # and no adapter here trained it (refused above). The exclusion keeps it so for adapters saved without one.
    peft_model: nn.Module = model
    for run_dir, name in zip(run_dirs, adapter_names):
        peft_model = builder.attach_adapter(
            peft_model, run_dir, exclude=builder.VISION_TOWER_PATTERN, adapter_name=name
        )
    _adapters_in(peft_model, dtype)
    image_processor = builder._load_vision_tower(peft_model, dtype, device) if llava else None
    builder._refuse_nonfinite(peft_model, ", ".join(str(path) for path in run_dirs), base_dir)
    peft_model.eval()
    context_len = getattr(model.config, "max_sequence_length", builder.DEFAULT_CONTEXT_LEN)
    return LoadedRuns(tokenizer, peft_model, image_processor, context_len, adapter_names)


def _adapters_in(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the adapters in the model's dtype: PEFT upcasts fp16/bf16 adapters to fp32 for training's sake, which
    would make each adapter of a half-precision worker twice its size."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name and parameter.is_floating_point() and parameter.dtype != dtype:
                parameter.data = parameter.data.to(dtype)


def _run_config(run_dir: Path, base_config: Any) -> Any:
    kind = builder.detect_checkpoint_kind(run_dir)
    if kind is not builder.CheckpointKind.LORA:
        raise ValueError(
            f"{run_dir} is a {kind.value}, not a LoRA run: several --model-path share one --model-base only as LoRA "
            "runs; serve it in a worker of its own"
        )
    config_file = builder._run_config_file(run_dir)
    config = load_checkpoint_config(config_file.parent) if config_file is not None else base_config
    if builder.vision_tower_trained(config):
        raise ValueError(
            f"{run_dir} trained its vision tower (unfreeze_mm_vision_tower / lora_vision_tower): its tower is not the "
            "base's, so it cannot share one; serve it in a worker of its own"
        )
    return config


def _check_shareable(run_dirs: list[Path], configs: list[Any]) -> None:
    first = configs[0].to_dict()
    differing = [
        f"{run_dir}: {field} {config.to_dict().get(field)!r} vs {first.get(field)!r} in {run_dirs[0]}"
        for run_dir, config in zip(run_dirs[1:], configs[1:])
        for field in SHARED_FIELDS
        if config.to_dict().get(field) != first.get(field)
    ]
    if differing:
        raise ValueError(
            "these runs cannot share one base model: " + "; ".join(differing) + ". Serve each in a worker of its own"
        )


def _projector_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The run's non-LoRA trainables under the plain model's names; only what a shared base allows."""
    path = run_dir / NON_LORA_TRAINABLES_FILE
    if not path.is_file():
        return {}
    state, added_rows = split_added_rows(builder._normalise_non_lora_keys(load_state_file(path)))
    others = sorted(key for key in state if not key.startswith(SHAREABLE_PREFIXES))
    if added_rows or others:
        what = "rows of tokens it added to the vocabulary" if added_rows else builder._preview(others)
        raise ValueError(
            f"{path} holds {what}: weights of the base itself, so this run cannot share its base with other runs; "
            "serve it in a worker of its own"
        )
    return state


def _route_projectors(model: nn.Module, adapter_names: list[str], states: list[dict[str, torch.Tensor]]) -> None:
    """Put a RoutedProjector in place of the model's projector: the base's (or the first run's) projector with each
    run's trained weights loaded into its own copy."""
    inner = model.get_model()
    shared = inner.mm_projector
    projectors = {}
    for name, state in zip(adapter_names, states):
        projector = copy.deepcopy(shared)
        weights = {
            key.removeprefix(PROJECTOR_PREFIX): value
            for key, value in state.items()
            if key.startswith(PROJECTOR_PREFIX)
        }
        if weights:
            projector.load_state_dict(weights, strict=True)
        projectors[name] = projector
    inner.mm_projector = RoutedProjector(projectors)
