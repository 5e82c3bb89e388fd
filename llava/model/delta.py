"""LLaVA weights as a delta over their base language model, and back (upstream's ``make_delta`` / ``apply_delta``,
from the time when the LLaMA weights could not be redistributed).

A delta checkpoint is a LLaVA checkpoint whose language-model weights are ``target - base``; the tensors the base
does not have (the projector) are stored as they are. A grown vocabulary (``<im_patch>``, ``<im_start>``/``<im_end>``)
makes the embedding matrices larger than the base's: only their overlap with the base's is a difference. Upstream
accepts as new tensors only the v0 linear projector's two names; here any projector (``mm_projector.*``, the LLaVA-1.5
MLP too), and anything else the base lacks is an error naming it.
"""

from __future__ import annotations

import logging
from os import PathLike

import torch

from llava.model import compat
from llava.model.families import family_of, is_llava_config, load_checkpoint_config

logger = logging.getLogger(__name__)

PROJECTOR_KEY = "mm_projector."
EMBEDDING_KEYS = ("model.embed_tokens.weight", "lm_head.weight")
DELTA_DTYPE = torch.float16  # what upstream loads and stores deltas in


def load_model(path: str | PathLike[str], dtype: torch.dtype = DELTA_DTYPE):
    """A LLaVA checkpoint as its family's class, any other model through transformers' Auto classes."""
    from transformers import AutoModelForCausalLM

    config = load_checkpoint_config(path)
    model_class = family_of(config).causal_lm_class if is_llava_config(config.to_dict()) else AutoModelForCausalLM
    return model_class.from_pretrained(path, config=config, dtype=dtype)


def shift_by_base(model: torch.nn.Module, base: torch.nn.Module, sign: int) -> None:
    """``model += sign * base`` tensor by tensor, in place (see the module docstring)."""
    base_state = base.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            other = base_state.get(name)
            if other is None:
                if PROJECTOR_KEY not in name:
                    raise ValueError(f"{name} is not in the base model and is no projector weight: wrong base model?")
                continue
            if tensor.shape == other.shape:
                tensor.add_(other, alpha=sign)
            elif name in EMBEDDING_KEYS and all(big >= small for big, small in zip(tensor.shape, other.shape)):
                tensor[: other.shape[0], : other.shape[1]].add_(other, alpha=sign)
            else:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)} here and {tuple(other.shape)} in the base")


def save(model: torch.nn.Module, tokenizer, directory: str | PathLike[str], hub_repo_id: str | None = None) -> None:
    """``save_pretrained`` of model and tokenizer, readable by upstream's stack too (see :mod:`llava.model.compat`),
    and uploaded to ``hub_repo_id`` when given (upstream's ``push_to_hub``)."""
    model.save_pretrained(directory)
    compat.config_for_transformers4(directory)
    compat.save_tokenizer(tokenizer, directory)
    if hub_repo_id:
        from huggingface_hub import upload_folder

        upload_folder(folder_path=str(directory), repo_id=hub_repo_id)
