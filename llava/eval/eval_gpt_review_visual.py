"""GPT-4 review of answers about COCO images described by captions and boxes (upstream's
``eval_gpt_review_visual``, same flags): as :mod:`llava.eval.eval_gpt_review_bench`, with the context made of the
image's ``captions`` and its ``instances`` (``category: bbox`` lines), and the rule named by the category itself."""

from __future__ import annotations

import argparse

from llava.eval.eval_gpt_review_bench import review_jobs
from llava.eval.gpt_review import add_review_arguments, make_get_eval, parse_score, write_reviews

__all__ = ["NUM_SECONDS_TO_SLEEP", "get_eval", "parse_score", "main"]

MODEL = "gpt-4-0314"
NUM_SECONDS_TO_SLEEP = 0.5

get_eval = make_get_eval(MODEL, NUM_SECONDS_TO_SLEEP)


def boxes_context(context: dict) -> str:
    boxes = "\n".join(f"{instance['category']}: {instance['bbox']}" for instance in context["instances"])
    return "\n".join(context["captions"]) + "\n\n" + boxes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ChatGPT-based QA evaluation.")
    add_review_arguments(parser, model=MODEL, request_interval=NUM_SECONDS_TO_SLEEP, workers=1, context=True)
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    return write_reviews(review_jobs(args, boxes_context, ""), args, resume=True)


if __name__ == "__main__":
    main()
