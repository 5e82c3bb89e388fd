"""Score SEED-Bench answers and write the upload file, as ``scripts/v1_5/eval/seed.sh``:
``python scripts/convert_seed_for_submission.py --annotation-file SEED-Bench.json --result-file merge.jsonl
--result-upload-file answers_upload/llava-v1.5-13b.jsonl``.

An answer is right when its text equals the question's ``answer`` letter exactly. Prints the accuracy per question
type and in total, then for image and video questions alone, and writes ``{"question_id", "prediction"}`` per line for
every question of the annotation file (every question needs an answer).
"""

from __future__ import annotations

import argparse
import json
import os

from llava.eval.answers import read_jsonl


def _question_id(question: dict):
    """SEED's ids are strings; LLaVA's question files use ints where they can."""
    try:
        return int(question["question_id"])
    except (TypeError, ValueError):
        return question["question_id"]


def accuracy(data: dict, results: dict, data_type: str | None = None) -> float | None:
    """Percent correct over the questions (of ``data_type`` when given), printed as upstream prints it; None when
    there are no such questions (upstream divided by zero)."""
    counts: dict = {}
    correct: dict = {}
    for question in data["questions"]:
        if data_type is not None and question["data_type"] != data_type:
            continue
        kind = question["question_type_id"]
        counts[kind] = counts.get(kind, 0) + 1
        row = results.get(_question_id(question))
        correct[kind] = correct.get(kind, 0) + (1 if row is not None and row["text"] == question["answer"] else 0)
    if not counts:
        print(f"{data_type} accuracy: no questions")
        return None
    type_names = {type_id: name for name, type_id in data["question_type"].items()}
    if data_type is None:
        for kind in sorted(counts):
            print(f"{type_names[kind]}: {correct[kind] / counts[kind] * 100:.2f}%")
    total = sum(correct.values()) / sum(counts.values()) * 100
    print(f"Total accuracy: {total:.2f}%" if data_type is None else f"{data_type} accuracy: {total:.2f}%")
    return total


def convert(annotation_file: str, result_file: str, result_upload_file: str) -> dict[str, float | None]:
    with open(annotation_file, encoding="utf-8") as file:
        data = json.load(file)
    results = {row["question_id"]: row for row in read_jsonl(result_file)}
    scores = {"total": accuracy(data, results)}
    for data_type in ("image", "video"):
        scores[data_type] = accuracy(data, results, data_type)
    missing = [
        q["question_id"]
        for q in data["questions"]
        if _question_id(q) not in results and q["question_id"] not in results
    ]
    if missing:
        raise ValueError(
            f"{len(missing)} questions of {annotation_file} have no answer in {result_file} (first: {missing[:5]}); "
            "answer every chunk and merge them before writing the upload file"
        )
    if os.path.dirname(result_upload_file):
        os.makedirs(os.path.dirname(result_upload_file), exist_ok=True)
    with open(result_upload_file, "w", encoding="utf-8") as file:
        for question in data["questions"]:
            row = results.get(question["question_id"]) or results[_question_id(question)]
            file.write(json.dumps({"question_id": question["question_id"], "prediction": row["text"]}) + "\n")
    return scores


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SEED-Bench answers -> accuracy and upload file.")
    parser.add_argument("--annotation-file", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    parser.add_argument("--result-upload-file", type=str, required=True)
    return parser


def main(argv: list[str] | None = None) -> dict[str, float | None]:
    args = build_parser().parse_args(argv)
    return convert(args.annotation_file, args.result_file, args.result_upload_file)


if __name__ == "__main__":
    main()
