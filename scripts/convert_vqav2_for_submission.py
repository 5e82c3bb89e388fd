"""Turn merged VQAv2 answers into an EvalAI upload, as ``scripts/v1_5/eval/vqav2.sh``:
``python scripts/convert_vqav2_for_submission.py --split llava_vqav2_mscoco_test-dev2015 --ckpt llava-v1.5-13b``.

Reads ``<dir>/answers/<split>/<ckpt>/merge.jsonl`` and the question list ``<dir>/llava_vqav2_mscoco_test2015.jsonl``;
writes ``<dir>/answers_upload/<split>/<ckpt>.json``: ``[{"question_id", "answer"}]`` for every test question, the
answer normalised as the VQA evaluation does, ``""`` for unanswered questions. Lines that are not JSON are counted
and skipped, as upstream.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from llava.eval.answers import read_answer_texts
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor

logger = logging.getLogger("convert_vqav2_for_submission")
TEST_QUESTIONS = "llava_vqav2_mscoco_test2015.jsonl"


def convert(directory: str, ckpt: str, split: str) -> str:
    src = os.path.join(directory, "answers", split, ckpt, "merge.jsonl")
    dst = os.path.join(directory, "answers_upload", split, f"{ckpt}.json")
    answers, errors = read_answer_texts(src)
    with open(os.path.join(directory, TEST_QUESTIONS), encoding="utf-8") as file:
        questions = [json.loads(line) for line in file if line.strip()]
    print(f"total results: {len(answers)}, total split: {len(questions)}, error_line: {errors}")
    normalise = EvalAIAnswerProcessor()
    upload = []
    for question in questions:
        text = answers.get(question["question_id"])
        upload.append({"question_id": question["question_id"], "answer": "" if text is None else normalise(text)})
    missing = sum(1 for question in questions if question["question_id"] not in answers)
    if missing:
        logger.warning("%d of %d test questions have no answer in %s: submitted as ''", missing, len(questions), src)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w", encoding="utf-8") as file:
        json.dump(upload, file)
    return dst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Merged VQAv2 answers -> EvalAI upload file.")
    parser.add_argument("--dir", type=str, default="./playground/data/eval/vqav2")
    parser.add_argument("--ckpt", type=str, required=True)
    parser.add_argument("--split", type=str, required=True)
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    return convert(args.dir, args.ckpt, args.split)


if __name__ == "__main__":
    main()
