"""The ``llava-tiny`` command: build the tiny parts (and optionally a hub cache holding them) into a folder."""

from __future__ import annotations

import argparse
import logging

from llava.testing.build import build_all
from llava.testing.hub import build_hub_cache

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="llava-tiny", description="Build tiny offline stand-ins for LLaVA-1.5's parts and data."
    )
    parser.add_argument("root", help="directory to build into (reused when already built with the same seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hub-cache",
        metavar="HF_HOME",
        default=None,
        help="also write a Hugging Face cache holding the models under the released repo ids",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = build_all(args.root, seed=args.seed)
    for field, value in paths.__dict__.items():
        logger.info("%13s: %s", field, value)
    if args.hub_cache:
        logger.info("%13s: %s (HF_HOME=%s)", "hub cache", build_hub_cache(args.hub_cache, paths), args.hub_cache)


if __name__ == "__main__":
    main()
