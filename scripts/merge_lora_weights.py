"""Merge a LoRA run into its base model and save a complete model directory (weights, config, tokenizer).

    python scripts/merge_lora_weights.py --model-path ./checkpoints/llava-v1.5-7b-lora \
        --model-base lmsys/vicuna-7b-v1.5 --save-model-path ./checkpoints/llava-v1.5-7b-merged

The run may be the training ``output_dir`` or any ``checkpoint-N/`` in it. The merge is computed in float32 and the
result saved in ``--dtype`` (float16 by default, as upstream, which always saves float16). The vision tower is not
copied: like upstream's LLaVA-1.5 checkpoints, the saved config names it in ``mm_vision_tower``
(docs/upstream_differences.md #27). A run that trained its tower (``--unfreeze_mm_vision_tower``, or
``--lora_vision_tower``, merged in here) keeps it in the saved weights, and the config says so as LLaVA-NeXT does
(``unfreeze_mm_vision_tower``), so that loaders build the tower from them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from llava.mm_utils import get_model_name_from_path
from llava.model import compat
from llava.model.builder import load_pretrained_model, vision_tower_trained
from llava.model.state_files import nonfinite_tensors

logger = logging.getLogger("merge_lora_weights")

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def merge_lora(args: argparse.Namespace) -> Path:
    """Load ``args.model_path`` over ``args.model_base`` with LoRA merged and write it to ``args.save_model_path``."""
    save_dir = Path(args.save_model_path)
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, _, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, device="cpu", dtype=torch.float32
    )
    model.to(DTYPES[args.dtype])
    model.config.dtype = DTYPES[args.dtype]
    if vision_tower_trained(model.config):
        model.config.unfreeze_mm_vision_tower = True
        state_dict = model.state_dict()
    else:
        state_dict = _without_vision_tower(model)
    overflowed = nonfinite_tensors(state_dict)  # the loader refused non-finite inputs: only the cast can cause them
    if overflowed:
        raise ValueError(
            f"the merged weights {', '.join(overflowed[:5])} exceed the range of {args.dtype} (inf after the cast); "
            "nothing was saved. Pass --dtype bfloat16 or --dtype float32"
        )
    model.save_pretrained(save_dir, state_dict=state_dict)
    # Also readable by upstream's stack (transformers 4.37): its config names and the slow tokenizer's files.
    compat.config_for_transformers4(save_dir)
    compat.save_tokenizer(tokenizer, save_dir)
    logger.info("merged model saved to %s (%s)", save_dir, args.dtype)
    return save_dir


def _without_vision_tower(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights except the vision tower's, which is loaded from ``mm_vision_tower`` at load time."""
    get_vision_tower = getattr(model, "get_vision_tower", None)
    vision_tower = get_vision_tower() if get_vision_tower is not None else None
    prefixes = tuple(
        f"{name}." for name, module in model.named_modules() if vision_tower is not None and module is vision_tower
    )
    return {key: value for key, value in model.state_dict().items() if not (prefixes and key.startswith(prefixes))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=str, required=True, help="the LoRA run (output_dir or checkpoint-N)")
    parser.add_argument("--model-base", type=str, required=True, help="the model the LoRA was trained over")
    parser.add_argument("--save-model-path", type=str, required=True, help="where to write the merged model")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="dtype of the saved weights")
    return parser


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    merge_lora(build_parser().parse_args())
