"""Re-save a LLaVA checkpoint without what it does not need (upstream's ``consolidate``, same flags):

    python -m llava.model.consolidate --src ~/model_weights/llava-7b --dst ~/model_weights/llava-7b_consolidate

Upstream's answer to checkpoints that DeepSpeed saved with the frozen vision tower inside (upstream #672): the tower
loads from ``mm_vision_tower``, so its stored copy is dropped. A checkpoint that fine-tuned its tower
(``unfreeze_mm_vision_tower``, LLaVA-1.6) keeps it. An old (v0) config is upgraded first, after asking.
"""

from __future__ import annotations

import argparse
import logging

from transformers import AutoTokenizer

from llava.model.delta import load_model, save
from llava.model.utils import auto_upgrade

logger = logging.getLogger(__name__)


def consolidate_ckpt(src_path, dst_path) -> None:
    logger.info("Loading model %s", src_path)
    auto_upgrade(src_path)
    model = load_model(src_path)
    save(model, AutoTokenizer.from_pretrained(src_path), dst_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Re-save a LLaVA checkpoint without a stored frozen vision tower.")
    parser.add_argument("--src", type=str, required=True)
    parser.add_argument("--dst", type=str, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    consolidate_ckpt(args.src, args.dst)


if __name__ == "__main__":
    main()
