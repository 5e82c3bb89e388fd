"""Answer ScienceQA in LLaVA's conversation format (``llava_test_CQM-A.json``), as ``scripts/v1_5/eval/sqa.sh``:
``python -m llava.eval.model_vqa_science --model-path ... --question-file llava_test_CQM-A.json --image-folder
images/test --answers-file answers.jsonl --single-pred-prompt --temperature 0 --conv-mode vicuna_v1``.

The question file is a JSON list of ``{"id", "image"?, "conversations": [{"from": "human", "value": ...}, ...]}``;
the first turn is asked, with the image when the sample has one (text-only questions are asked without). The answer
line's ``prompt`` starts with ``<image>\\n`` for image questions, which ``eval_science_qa`` counts as IMG-accuracy.
Defaults as upstream: ``--conv-mode llava_v0``, ``--temperature 0.2``, up to 1024 new tokens.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval import common
from llava.eval.common import get_chunk, split_list  # noqa: F401  (upstream defines them here)

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def read_questions(question_file: str) -> list[dict[str, Any]]:
    with open(os.path.expanduser(question_file), encoding="utf-8") as file:
        try:
            questions = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{question_file} is not JSON ({error}); pass the ScienceQA file in LLaVA's format"
            ) from None
    if not isinstance(questions, list):
        raise ValueError(f"{question_file} must hold a JSON list of samples, not a {type(questions).__name__}")
    for number, question in enumerate(questions, start=1):
        where = f"{question_file}, sample {number}"
        common.require(question, ("id", "conversations"), where)
        if not question["conversations"] or "value" not in question["conversations"][0]:
            raise ValueError(f"{where} ({question['id']}) has no first turn with a 'value' to ask")
    return questions


def science_requests(args: argparse.Namespace):
    def to_requests(question: dict[str, Any], config: Any):
        text = question["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        query, prompt, image_path = text, text, None
        if "image" in question:
            image_path = os.path.join(args.image_folder, question["image"])
            query = common.image_query(text, getattr(config, "mm_use_im_start_end", False))
            prompt = DEFAULT_IMAGE_TOKEN + "\n" + text
        if args.single_pred_prompt:
            query += "\n" + SINGLE_PRED_PROMPT
            prompt += "\n" + SINGLE_PRED_PROMPT
        yield common.Request(question_id=question["id"], prompt=prompt, query=query, image_path=image_path)

    return to_requests


def eval_model(args: argparse.Namespace) -> int:
    common.check_args(args)
    questions = read_questions(args.question_file)
    return common.run(args, questions, science_requests(args))


def build_parser() -> argparse.ArgumentParser:
    parser = common.build_parser(
        "Answer ScienceQA questions (LLaVA's conversation format).",
        question_file="tables/question.json", conv_mode="llava_v0", max_new_tokens=1024,
    )  # fmt: skip
    parser.add_argument("--answer-prompter", action="store_true", help="accepted for upstream's scripts; unused")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option's letter only")
    return parser


def main(argv: list[str] | None = None) -> int:
    common.configure_logging()
    return eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
