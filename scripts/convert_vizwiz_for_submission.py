"""Turn VizWiz answers into an EvalAI upload, as ``scripts/v1_5/eval/vizwiz.sh``:
``python scripts/convert_vizwiz_for_submission.py --annotation-file llava_test.jsonl --result-file answers.jsonl
--result-upload-file answers_upload/llava-v1.5-13b.json``.

Writes ``[{"image", "answer"}]`` in the question file's order, each answer normalised as the VQA evaluation does.
Every question needs an answer (an incomplete upload is an error naming the missing question ids).
"""

from __future__ import annotations

import argparse
import json
import os

from llava.eval.answers import read_answer_texts
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor


def convert(annotation_file: str, result_file: str, result_upload_file: str) -> list[dict]:
    answers, errors = read_answer_texts(result_file)
    with open(annotation_file, encoding="utf-8") as file:
        questions = [json.loads(line) for line in file if line.strip()]
    print(f"total results: {len(answers)}, total split: {len(questions)}, error_line: {errors}")
    missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if missing:
        raise ValueError(
            f"{len(missing)} questions of {annotation_file} have no answer in {result_file} (first: {missing[:5]}); "
            "answer every chunk and merge them before converting"
        )
    normalise = EvalAIAnswerProcessor()
    upload = [{"image": q["image"], "answer": normalise(answers[q["question_id"]])} for q in questions]
    if os.path.dirname(result_upload_file):
        os.makedirs(os.path.dirname(result_upload_file), exist_ok=True)
    with open(result_upload_file, "w", encoding="utf-8") as file:
        json.dump(upload, file)
    return upload


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="VizWiz answers -> EvalAI upload file.")
    parser.add_argument("--annotation-file", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    parser.add_argument("--result-upload-file", type=str, required=True)
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    return convert(args.annotation_file, args.result_file, args.result_upload_file)


if __name__ == "__main__":
    main()
