"""Write the projector of a full LLaVA checkpoint into an ``mm_projector.bin`` (upstream's utility, same flags).

    python scripts/extract_mm_projector.py --model-path liuhaotian/llava-v1.5-7b --output ./mm_projector.bin

``--model-path`` is a model directory or a hub id. Only the weight files that hold projector tensors are read (a
sharded checkpoint's index says which), each with the safe reader. Keys are kept as stored
(``model.mm_projector.0.weight``, ...), so the file loads as ``--pretrain_mm_mlp_adapter``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from llava.model.hub import resolve_model_dir
from llava.model.state_files import load_state_file

logger = logging.getLogger("extract_mm_projector")

PROJECTOR_KEY = "mm_projector"
INDEX_FILES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
SINGLE_FILES = ("pytorch_model.bin", "model.safetensors")


def projector_files(model_dir: Path) -> list[Path]:
    """The weight files of ``model_dir`` that hold projector tensors (all of them when there is no index)."""
    for name in INDEX_FILES:
        index = model_dir / name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return sorted({model_dir / file for key, file in weight_map.items() if PROJECTOR_KEY in key})
    files = [model_dir / name for name in SINGLE_FILES if (model_dir / name).is_file()]
    if not files:
        raise FileNotFoundError(
            f"{model_dir} has no model weights ({', '.join(INDEX_FILES + SINGLE_FILES)}); pass a full LLaVA "
            "checkpoint (a LoRA run keeps its projector in non_lora_trainables.bin)"
        )
    return files[:1]


def extract(model_path: str, output: str) -> dict[str, torch.Tensor]:
    model_dir = resolve_model_dir(model_path, what="--model-path")
    state = {}
    for path in projector_files(model_dir):
        state.update({key: value for key, value in load_state_file(path).items() if PROJECTOR_KEY in key})
    if not state:
        raise ValueError(f"{model_path} holds no {PROJECTOR_KEY} weights: it is not a LLaVA checkpoint")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, output)
    logger.info("wrote %d projector tensors from %s to %s", len(state), model_path, output)
    return state


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Extract MMProjector weights")
    parser.add_argument("--model-path", type=str, required=True, help="model folder or hub id")
    parser.add_argument("--output", type=str, required=True, help="output file")
    return parser


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = build_parser().parse_args()
    extract(arguments.model_path, arguments.output)
