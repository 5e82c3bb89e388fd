"""LLaVA's output files: what a LoRA run, a projector-pretraining run and a full fine-tune write, and reading
them back when a run resumes.

LoRA (`--lora_enable True`), in `output_dir` and in every `checkpoint-N/` (upstream #1010, #1245, #1566):
`adapter_model.bin` + `adapter_config.json` (written by PEFT, keys without the adapter name),
`non_lora_trainables.bin` (every trainable non-LoRA tensor, e.g. the projector, and the embedding rows of tokens the
run added, see `llava.model.added_tokens`) and `config.json`.
Projector pretraining (`--tune_mm_mlp_adapter True`): `mm_projector.bin` (and the added rows) + `config.json`.
Full fine-tune: transformers' own `save_pretrained` directory (handled by `Trainer`).

Tensors come from the ZeRO-3 helpers in `llava.distributed.zero3` (one gather path for everything): every rank calls
the `save_*` functions, only the main process writes.
"""

from __future__ import annotations

import copy
import enum
import json
import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from llava.distributed.zero3 import (
    get_mm_adapter_state_maybe_zero_3,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
)
from llava.model import compat
from llava.model.added_tokens import added_rows_state, restore_added_rows, split_added_rows
from llava.model.files import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    CONFIG_FILE,
    NON_LORA_TRAINABLES_FILE,
    PROJECTOR_FILE,
)
from llava.model.state_files import load_state_file, nonfinite_tensors

logger = logging.getLogger(__name__)


# The config written next to an adapter describes the model to rebuild for inference, not this training process:
# the cache is on (upstream sets use_cache=True before its final save) and the base is loaded unquantized unless
# the loader is asked to quantize (a QLoRA adapter applies to the base model's weights; docs/upstream_differences.md #26).
_CONFIG_FIELDS_DROPPED = ("quantization_config",)


class OutputKind(enum.Enum):
    LORA = "lora"
    PROJECTOR = "projector"
    FULL = "full"


def output_kind(model: nn.Module, args) -> OutputKind:
    """Which set of files this run writes: decided by the model (PEFT-wrapped or not) and its config."""
    from peft import PeftModel

    if getattr(args, "lora_enable", False) or isinstance(model, PeftModel):
        return OutputKind.LORA
    if getattr(getattr(model, "config", None), "tune_mm_mlp_adapter", False):
        return OutputKind.PROJECTOR
    return OutputKind.FULL


def save_config(config, output_dir: str) -> None:
    """Write `config.json` as it should be read for inference (`use_cache` on, no quantization settings)."""
    config = copy.deepcopy(config)
    config.use_cache = True
    for name in _CONFIG_FIELDS_DROPPED:
        if hasattr(config, name):
            delattr(config, name)
    config.save_pretrained(output_dir)
    compat.config_for_transformers4(output_dir)  # upstream's stack (transformers 4.37) reads it too


def files_for_upstream_stack(output_dir: str, tokenizer=None) -> None:
    """Make a model folder written by `save_pretrained` readable by upstream's stack (see llava.model.compat)."""
    if os.path.isfile(os.path.join(output_dir, CONFIG_FILE)):
        compat.config_for_transformers4(output_dir)
    if tokenizer is not None:
        compat.save_tokenizer(tokenizer, output_dir)


def save_lora_outputs(model: nn.Module, output_dir: str, lora_bias: str, is_main_process: bool) -> None:
    """Write the adapter, `non_lora_trainables.bin` and `config.json` of a PEFT model into `output_dir`.

    A PiSSA/OLoRA adapter is written as the ordinary LoRA it amounts to over the original base
    (:func:`lora_over_original_base`), so that it loads and merges like any other run.
    """
    from llava.train.lora import initial_adapter

    named = list(model.named_parameters())
    adapter_state = get_peft_state_maybe_zero_3(named, lora_bias)
    non_lora_state = {**get_peft_state_non_lora_maybe_zero_3(named), **added_rows_state(model)}
    refuse_nonfinite({**adapter_state, **non_lora_state}, output_dir)
    initial = initial_adapter(model)
    if initial is not None:
        adapter_state = lora_over_original_base(adapter_state, initial)
    if not is_main_process:
        return
    os.makedirs(output_dir, exist_ok=True)
    save_config(model.config, output_dir)
    # .bin as upstream (the loader and upstream's tools read adapter_model.bin); PEFT strips the adapter name.
    # The embedding layers are never part of the adapter: when they train, they are in non_lora_trainables.bin.
    model.save_pretrained(output_dir, state_dict=adapter_state, safe_serialization=False, save_embedding_layers=False)
    if initial is not None:
        _describe_converted_adapter(output_dir)
    compat.adapter_config_for_old_peft(output_dir)  # upstream's loader runs peft 0.10
    torch.save(non_lora_state, os.path.join(output_dir, NON_LORA_TRAINABLES_FILE))
    logger.info(
        "Saved LoRA adapter (%d tensors) and %d non-LoRA trainable tensors to %s",
        len(adapter_state),
        len(non_lora_state),
        output_dir,
    )


def save_projector_outputs(
    model: nn.Module, output_dir: str, keys_to_match: Sequence[str], is_main_process: bool
) -> None:
    """Write `mm_projector.bin` (every tensor whose name contains one of `keys_to_match`) and `config.json`."""
    state = {**get_mm_adapter_state_maybe_zero_3(model.named_parameters(), keys_to_match), **added_rows_state(model)}
    refuse_nonfinite(state, output_dir)
    if not is_main_process:
        return
    os.makedirs(output_dir, exist_ok=True)
    save_config(model.config, output_dir)
    torch.save(state, os.path.join(output_dir, PROJECTOR_FILE))
    logger.info("Saved the projector (%d tensors) to %s", len(state), output_dir)


# ----------------------------------------------------------------------------------------------------------------
# PiSSA / OLoRA: the adapter as an ordinary LoRA over the original base


def lora_over_original_base(
    adapter_state: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """PiSSA/OLoRA train A, B over W_res = W - s B0 A0 (s = the LoRA scaling, A0/B0 their starting values), so the
    trained weight W_res + s B A equals W + s (B A - B0 A0) = W + s [B | -B0] [A ; A0]: a LoRA of rank 2r over the
    original W, with the same scaling when alpha doubles too (peft's `subtract_mutated_init`, the conversion behind
    `save_pretrained(path_initial_model_for_weight_conversion=...)`). Tensors other than A and B are kept as they are.
    """
    converted = {}
    for name, value in adapter_state.items():
        if ".lora_A." in name:
            converted[name] = torch.cat([value, initial[name].to(value)], dim=0)
        elif ".lora_B." in name:
            converted[name] = torch.cat([value, -initial[name].to(value)], dim=1)
        else:
            converted[name] = value
    return converted


def lora_for_training(adapter_state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]):
    """The inverse of :func:`lora_over_original_base` for resuming: the trained A and B are the first r rows of A'
    and the first r columns of B' (r: the model's rank)."""
    restored = {}
    for name, value in adapter_state.items():
        own = model_state.get(name)
        if own is not None and ".lora_A." in name and value.shape[0] == 2 * own.shape[0]:
            value = value[: own.shape[0]]
        elif own is not None and ".lora_B." in name and value.shape[1] == 2 * own.shape[1]:
            value = value[:, : own.shape[1]]
        restored[name] = value
    return restored


def _describe_converted_adapter(output_dir: str) -> None:
    """adapter_config.json of the converted adapter: rank 2r, alpha doubled (rsLoRA: times sqrt 2) to keep the
    scaling, and an ordinary init, so that loading it never re-runs PiSSA/OLoRA on the base (peft does the same)."""
    path = os.path.join(output_dir, ADAPTER_CONFIG_FILE)
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["r"] *= 2
    config["lora_alpha"] *= 2**0.5 if config.get("use_rslora") else 2
    config["init_lora_weights"] = True
    for pattern in ("rank_pattern", "alpha_pattern"):
        if config.get(pattern):
            config[pattern] = {key: 2 * value for key, value in config[pattern].items()}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)


class NonFiniteWeightsError(RuntimeError):
    """A save was asked to write NaN or inf weights; nothing was written."""


def refuse_nonfinite(state: dict[str, torch.Tensor], output_dir: str) -> None:
    """Raise before writing `state` into `output_dir` when any tensor holds NaN or inf."""
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(
            f"not saving {output_dir}: the weights {shown} hold NaN or inf. The run diverged; resume from the last "
            "checkpoint with a lower --learning_rate, or train in float32 / --bf16 True instead of float16 weights."
        )


def load_lora_outputs(model: nn.Module, checkpoint_dir: str) -> None:
    """Restore the adapter AND the non-LoRA trainables (the projector) from a LoRA checkpoint (upstream #1200)."""
    from peft import set_peft_model_state_dict

    from llava.train.lora import initial_adapter

    adapter_state = _load_tensors(os.path.join(checkpoint_dir, ADAPTER_WEIGHTS_FILE))
    if initial_adapter(model) is not None:  # saved as an ordinary LoRA over the original base
        from peft import get_peft_model_state_dict

        adapter_state = lora_for_training(adapter_state, get_peft_model_state_dict(model))
    result = set_peft_model_state_dict(model, adapter_state)
    if result.unexpected_keys:
        raise ValueError(
            f"{checkpoint_dir}/{ADAPTER_WEIGHTS_FILE} holds tensors this model has no place for: "
            f"{sorted(result.unexpected_keys)[:5]}; resume with the same LoRA flags as the original run."
        )
    non_lora_path = os.path.join(checkpoint_dir, NON_LORA_TRAINABLES_FILE)
    _load_into(model, _load_tensors(non_lora_path), non_lora_path)
    logger.info("Restored the adapter and the non-LoRA trainables from %s", checkpoint_dir)


def load_projector_outputs(model: nn.Module, checkpoint_dir: str) -> None:
    """Restore the projector from a projector-pretraining checkpoint."""
    path = os.path.join(checkpoint_dir, PROJECTOR_FILE)
    _load_into(model, _load_tensors(path), path)
    logger.info("Restored the projector from %s", checkpoint_dir)


def _load_tensors(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing, so the checkpoint cannot be resumed; delete the incomplete checkpoint folder "
            "to resume from the one before it."
        )
    return load_state_file(
        path
    )  # weights_only: a .bin must not be able to run code when loaded (docs/upstream_differences.md #9)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Copy `state` into the parameters of the same names (and the added tokens' rows into theirs); every key must
    name one of the model's tensors."""
    state, added_rows = split_added_rows(state)
    restore_added_rows(model, added_rows, path)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"{path} holds tensors this model does not have: {sorted(result.unexpected_keys)[:5]}; resume with "
            "the same model and flags as the original run."
        )


def safe_save_model_for_hf_trainer(trainer, output_dir: str) -> None:
    """Save the trained model the way LLaVA does (upstream's name, kept for scripts that call it).

    `LLaVATrainer.save_model` writes the right file set for the run (LoRA, projector pretraining or full);
    call this on every rank, as with any ZeRO-3 save.
    """
    trainer.save_model(output_dir)
