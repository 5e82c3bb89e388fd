"""Rebuild LLaVA weights from a delta and its base (upstream's ``apply_delta``, same flags):

    python -m llava.model.apply_delta --base-model-path ~/model_weights/llama-7b \
        --target-model-path ~/model_weights/llava-7b --delta-path liuhaotian/llava-7b-delta

See :mod:`llava.model.delta`.
"""

from __future__ import annotations

import argparse
import logging

from transformers import AutoTokenizer

from llava.model.delta import load_model, save, shift_by_base

logger = logging.getLogger(__name__)


def apply_delta(base_model_path, target_model_path, delta_path) -> None:
    logger.info("Loading base model %s", base_model_path)
    base = load_model(base_model_path)
    logger.info("Loading delta %s", delta_path)
    delta = load_model(delta_path)
    tokenizer = AutoTokenizer.from_pretrained(delta_path)
    logger.info("Applying delta")
    shift_by_base(delta, base, sign=1)
    logger.info("Saving target model to %s", target_model_path)
    save(delta, tokenizer, target_model_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Add a LLaVA delta to its base model.")
    parser.add_argument("--base-model-path", type=str, required=True)
    parser.add_argument("--target-model-path", type=str, required=True)
    parser.add_argument("--delta-path", type=str, required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    apply_delta(args.base_model_path, args.target_model_path, args.delta_path)


if __name__ == "__main__":
    main()
