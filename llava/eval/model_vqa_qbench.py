"""Answer Q-Bench's LLVisionQA questions (``scripts/v1_5/eval/qbench.sh`` / ``qbench_zh.sh``):

    python -m llava.eval.model_vqa_qbench --model-path liuhaotian/llava-v1.5-13b \
        --image-folder ./playground/data/eval/qbench/images_llvisionqa/ \
        --questions-file ./playground/data/eval/qbench/llvisionqa_dev.json \
        --answers-file ./playground/data/eval/qbench/llvisionqa_dev_answers.jsonl --conv-mode llava_v1 --lang en

Upstream's scripts call this module, which its repository does not have at c121f04; it is written here from
Q-Bench's question format: a JSON list of ``{"img_path", "question", "candidates", ...}``. Each question is asked
with its candidates as lettered options and the instruction to answer with the letter (``--lang zh``: in Chinese).
Answer lines carry the usual keys and, after ``text``, the question's own fields and ``response`` (the answer), which
Q-Bench's scoring reads.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from llava.eval import common
from llava.eval.common import get_chunk, split_list  # noqa: F401  (as in the other model_vqa* modules)

OPTION_LETTERS = "ABCDEFGH"
ANSWER_WITH_LETTER = {
    "en": "Answer with the option's letter from the given choices directly.",
    "zh": "请直接回答选项字母。",
}
QUESTION_KEYS = ("img_path", "question", "candidates")


def read_questions(question_file: str) -> list[dict[str, Any]]:
    with open(os.path.expanduser(question_file), encoding="utf-8") as file:
        questions = json.load(file)
    if not isinstance(questions, list):
        raise ValueError(f"{question_file} is not a JSON list of Q-Bench questions")
    for number, question in enumerate(questions, start=1):
        common.require(question, QUESTION_KEYS, f"{question_file}, question {number}")
    return questions


class QBenchRequest(common.Request):
    def answer_line(self, text: str, model_id: str) -> dict[str, Any]:
        return {**super().answer_line(text, model_id), "response": text}


def qbench_requests(args: argparse.Namespace):
    """``to_requests`` over ``(position in the file, question)`` pairs: the position is the answer's
    ``question_id`` when the question has no ``id``."""
    instruction = ANSWER_WITH_LETTER["zh" if args.lang == "zh" else "en"]

    def to_requests(numbered: tuple[int, dict[str, Any]], config: Any):
        position, question = numbered
        options = "\n".join(
            f"{letter}. {candidate}" for letter, candidate in zip(OPTION_LETTERS, question["candidates"])
        )
        text = f"{question['question']}\n{options}"
        query = common.image_query(text, getattr(config, "mm_use_im_start_end", False)) + "\n" + instruction
        yield QBenchRequest(
            question_id=question.get("id", position), prompt=text, query=query,
            image_path=os.path.join(args.image_folder, question["img_path"]),
            after_text={key: value for key, value in question.items() if key != "response"},
        )  # fmt: skip

    return to_requests


def eval_model(args: argparse.Namespace) -> int:
    common.check_args(args)
    return common.run(args, list(enumerate(read_questions(args.question_file))), qbench_requests(args))


def build_parser() -> argparse.ArgumentParser:
    parser = common.build_parser(
        "Answer Q-Bench (LLVisionQA) questions.",
        question_file="llvisionqa_dev.json", conv_mode="llava_v1", max_new_tokens=128,
    )  # fmt: skip
    parser.add_argument("--questions-file", dest="question_file", help="the name upstream's qbench scripts use")
    parser.add_argument("--lang", type=str, default="en", choices=sorted(ANSWER_WITH_LETTER))
    return parser


def main(argv: list[str] | None = None) -> int:
    common.configure_logging()
    return eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
