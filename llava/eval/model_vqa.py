"""Answer a JSONL question file, one question at a time as upstream (or ``--batch-size N`` together):
``python -m llava.eval.model_vqa --model-path ./checkpoints/<run> --model-base <base> --question-file q.jsonl
--image-folder images/ --answers-file answers.jsonl``.

Question lines: ``{"question_id": ..., "image": "<file under --image-folder>", "text": "<question>"}``. Answer lines:
``question_id, prompt, text, answer_id, model_id, metadata`` (see :mod:`llava.eval.common`). Defaults as upstream:
``--conv-mode llava_v1``, ``--temperature 0.2`` and up to 1024 new tokens.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from llava.eval import common
from llava.eval.answers import read_jsonl
from llava.eval.common import get_chunk, split_list  # noqa: F401  (upstream defines them here)

QUESTION_KEYS = ("question_id", "image", "text")


def read_questions(question_file: str) -> list[dict[str, Any]]:
    """The question file's lines, each checked for upstream's keys."""
    questions = read_jsonl(question_file)
    for number, question in enumerate(questions, start=1):
        common.require(question, QUESTION_KEYS, f"{question_file}, question {number}")
    return questions


def image_requests(image_folder: str):
    """``to_requests`` for question lines that each name an image (model_vqa and model_vqa_loader)."""

    def to_requests(question: dict[str, Any], config: Any):
        yield common.Request(
            question_id=question["question_id"],
            prompt=question["text"],
            query=common.image_query(question["text"], getattr(config, "mm_use_im_start_end", False)),
            image_path=os.path.join(image_folder, question["image"]),
        )

    return to_requests


def eval_model(args: argparse.Namespace) -> int:
    common.check_args(args)
    questions = read_questions(args.question_file)
    return common.run(args, questions, image_requests(args.image_folder))


def build_parser() -> argparse.ArgumentParser:
    return common.build_parser(
        "Answer a JSONL file of image questions.",
        question_file="tables/question.jsonl", conv_mode="llava_v1", max_new_tokens=1024,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    common.configure_logging()
    return eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
