"""Store LLaVA weights as a delta over their base (upstream's ``make_delta``, same flags):

    python -m llava.model.make_delta --base-model-path ~/model_weights/llama-7b \
        --target-model-path ~/model_weights/llava-7b --delta-path ~/model_weights/llava-7b-delta \
        [--hub-repo-id liuhaotian/llava-7b-delta]

See :mod:`llava.model.delta`.
"""

from __future__ import annotations

import argparse
import logging

from transformers import AutoTokenizer

from llava.model.delta import load_model, save, shift_by_base
from llava.model.utils import auto_upgrade

logger = logging.getLogger(__name__)


def make_delta(base_model_path, target_model_path, delta_path, hub_repo_id=None) -> None:
    logger.info("Loading base model %s", base_model_path)
    base = load_model(base_model_path)
    logger.info("Loading target model %s", target_model_path)
    auto_upgrade(target_model_path)
    target = load_model(target_model_path)
    logger.info("Calculating delta")
    shift_by_base(target, base, sign=-1)
    logger.info("Saving delta to %s", delta_path)
    save(target, AutoTokenizer.from_pretrained(target_model_path), delta_path, hub_repo_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Store a LLaVA model as a delta over its base model.")
    parser.add_argument("--base-model-path", type=str, required=True)
    parser.add_argument("--target-model-path", type=str, required=True)
    parser.add_argument("--delta-path", type=str, required=True)
    parser.add_argument("--hub-repo-id", type=str, default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    make_delta(args.base_model_path, args.target_model_path, args.delta_path, args.hub_repo_id)


if __name__ == "__main__":
    main()
