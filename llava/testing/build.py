"""Every tiny part at once, under one folder, and the ``llava-tiny`` command line.

Layout written by :func:`build_all` under ``root``::

    clip-vit-tiny/          CLIPModel (vision + text) + CLIPImageProcessor, like openai/clip-vit-large-patch14-336
    vicuna-tiny/            LlamaForCausalLM + sentencepiece tokenizer, like lmsys/vicuna-7b-v1.5
    llava-tiny-pretrain/    mm_projector.bin + config.json, like upstream's pretraining output
    llava-v1.5-tiny/        a full LLaVA-1.5 checkpoint in upstream's layout (config with mm_* fields)
    data/llava_tiny.json    LLaVA conversations; images under data/images/

Command line: ``python -m llava.testing ROOT`` (or ``llava-tiny ROOT``; ``--hub-cache HF_HOME`` adds the cache of
:mod:`llava.testing.hub`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llava.testing.data import build_dataset
from llava.testing.files import write_json
from llava.testing.models import build_llava, build_llm, build_pretrain, build_tokenizer, build_vision_tower

logger = logging.getLogger(__name__)

# Bump when anything written changes: cached builds with another version are rebuilt.
BUILD_VERSION = "3"


@dataclass(frozen=True)
class TinyPaths:
    """Where :func:`build_all` put each part."""

    root: Path
    vision_tower: Path
    llm: Path
    pretrain: Path
    projector: Path
    llava: Path
    data: Path
    image_folder: Path


def _paths(root: Path) -> TinyPaths:
    return TinyPaths(
        root=root,
        vision_tower=root / "clip-vit-tiny",
        llm=root / "vicuna-tiny",
        pretrain=root / "llava-tiny-pretrain",
        projector=root / "llava-tiny-pretrain" / "mm_projector.bin",
        llava=root / "llava-v1.5-tiny",
        data=root / "data" / "llava_tiny.json",
        image_folder=root / "data" / "images",
    )


def build_all(root: str | Path, seed: int = 0) -> TinyPaths:
    """Build every tiny part under ``root`` (reusing a complete build of the same version and seed)."""
    root = Path(root).resolve()
    paths = _paths(root)
    stamp = root / ".tiny-build.json"
    wanted = {"version": BUILD_VERSION, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return paths
    root.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    # Each part is one small file: transformers' "Writing model shards" bars would only add noise.
    hf_logging.disable_progress_bar()
    try:
        _build_parts(root, paths, seed)
    finally:
        hf_logging.enable_progress_bar()
    write_json(stamp, wanted)
    logger.info("tiny models and data are in %s", root)
    return paths


def _build_parts(root: Path, paths: TinyPaths, seed: int) -> None:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tokenizer_dir = build_tokenizer(Path(tmp) / "tokenizer", seed)
        build_vision_tower(paths.vision_tower, seed)
        build_llm(paths.llm, tokenizer_dir, seed)
    build_pretrain(paths.pretrain, paths.llm, paths.vision_tower, seed)
    build_llava(paths.llava, paths.llm, paths.vision_tower, seed)
    build_dataset(paths.data.parent, seed=seed)
