"""The embedding rows of the tokens a run added to its base's vocabulary, saved beside the projector.

Training grows the embeddings and ``lm_head`` by a row for each token it adds: ``<im_patch>`` (upstream's default
``--mm_use_im_patch_token True``), ``<im_start>``/``<im_end>`` (``--mm_use_im_start_end``) and ``[PAD]``
(``--version v0``). A LoRA run saves neither matrix (the adapter holds LoRA weights, ``non_lora_trainables.bin``
the trainable tensors), so the rows the run trained with were lost: the loader grew the base again with fresh
random rows, and the loaded model was not the trained one (the new tokens' logits differed, and ``<im_start>`` /
``<im_end>`` changed every logit after them). Here the run writes the rows of the added ids into
``non_lora_trainables.bin`` (``mm_projector.bin`` for projector runs) under ``<parameter name>.added_rows``, and the
loader, the merge and resuming put them back (docs/upstream_differences.md #20). Upstream's loader reads these files
with ``strict=False`` and ignores keys it has no parameter for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from llava.distributed.zero3 import gather_to_cpu, gathered_for_modification
from llava.model.files import CONFIG_FILE

logger = logging.getLogger(__name__)

ADDED_ROWS_SUFFIX = ".added_rows"


def embedding_weights(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The input and output embedding matrices of ``model`` (a PEFT model too) under their parameter names."""
    wanted = {id(module.weight) for module in (model.get_input_embeddings(), model.get_output_embeddings())}
    return {name: param for name, param in model.named_parameters() if id(param) in wanted}


def base_vocab_size(model: torch.nn.Module) -> int | None:
    """The vocabulary of the model this run started from (its ``config.json`` at ``name_or_path``), or None."""
    source = getattr(model, "name_or_path", None)
    path = Path(source) / CONFIG_FILE if source else None
    if path is None or not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    return config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))


def added_rows_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{<embedding parameter name>.added_rows: rows}`` for the ids past the base's vocabulary; ``{}`` when the run
    added none. Every rank calls it (a ZeRO-3 partitioned matrix is gathered)."""
    base = base_vocab_size(model)
    size = model.get_input_embeddings().num_embeddings  # the full count, also while ZeRO-3 holds a slice
    if base is None:
        logger.warning(
            "cannot read the base model's vocabulary size (%s); the rows of tokens added by this run are not saved",
            getattr(model, "name_or_path", None),
        )
        return {}
    if size <= base:
        return {}
    full = gather_to_cpu(embedding_weights(model))
    return {f"{name}{ADDED_ROWS_SUFFIX}": weight[base:].clone() for name, weight in full.items()}


def split_added_rows(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(the other tensors, the added rows)`` of a state file's contents."""
    rows = {key: value for key, value in state.items() if key.endswith(ADDED_ROWS_SUFFIX)}
    return {key: value for key, value in state.items() if key not in rows}, rows


def restore_added_rows(model: torch.nn.Module, rows: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Write saved rows back into the last rows of their matrices (named as in ``model``'s parameters)."""
    if not rows:
        return
    params = dict(model.named_parameters())
    targets = []
    for key, value in sorted(rows.items()):
        name = key.removesuffix(ADDED_ROWS_SUFFIX)
        param = params.get(name)
        full_rows = getattr(param, "ds_shape", param.shape if param is not None else None)
        if param is None or value.ndim != 2 or value.shape[1] != full_rows[1] or value.shape[0] > full_rows[0]:
            raise ValueError(
                f"{source} holds added-token rows {key} {tuple(value.shape)} that do not fit this model "
                f"({name}: {tuple(full_rows) if full_rows is not None else 'no such parameter'}); pass the "
                "--model-base the run was trained from"
            )
        targets.append((param, value))
    with gathered_for_modification([param for param, _ in targets]), torch.no_grad():
        for param, value in targets:
            param[-value.shape[0] :] = value.to(dtype=param.dtype, device=param.device)
