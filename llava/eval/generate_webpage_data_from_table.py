"""The data of LLaVA's old comparison web page from its answer and review tables (upstream's
``generate_webpage_data_from_table``): run in ``llava/eval`` with ``table/`` beside it, it writes
``webpage/data.json`` (the questions, each with its answers, the GPT review and the scores). Kept for its helpers,
``read_jsonl`` and ``trim_hanging_lines``; the tables of upstream's page are not shipped.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

MODELS = ["vicuna"]
models = MODELS  # upstream's name
_SCORE_LINE = re.compile(r"\d+[, ]+\d+")


def read_jsonl(path: str, key: str | None = None) -> list[dict[str, Any]] | dict[Any, dict[str, Any]]:
    """The lines of a JSONL file; with ``key``, a dict of them by that field, in its sorted order."""
    with open(os.path.expanduser(path), encoding="utf-8") as file:
        data = [json.loads(line) for line in file if line.strip()]
    if key is None:
        return data
    return {item[key]: item for item in sorted(data, key=lambda item: item[key])}


def trim_hanging_lines(text: str, count: int) -> str:
    """``text`` without its first ``count`` lines."""
    text = text.strip()
    for _ in range(count):
        text = text.split("\n", 1)[1].strip()
    return text


def clean_review(review: str) -> str:
    """The review as the page shows it: without a first line of scores, the assistants in bold."""
    lines = review.strip().split("\n")
    if _SCORE_LINE.match(lines[0]):
        lines = lines[1:]
    return "\n".join(lines).replace("Assistant 1", "**Assistant 1**").replace("Assistant 2", "**Assistant 2**")


def page_order(question_id: int) -> int:
    """Upstream's reordering of the 80 questions on the page."""
    position = question_id + 60 if question_id <= 20 else question_id - 20
    position = position + 10 if position <= 50 else position - 50 if position <= 60 else position
    return 1 if position == 7 else position + 1 if position < 7 else position


def main() -> None:
    questions = read_jsonl("table/question.jsonl", key="question_id")
    vicuna = read_jsonl("table/answer/answer_vicuna-13b.jsonl", key="question_id")
    ours = read_jsonl("table/results/llama-13b-hf-alpaca.jsonl", key="question_id")
    reviews = read_jsonl("table/review/review_vicuna-13b_llama-13b-hf-alpaca.jsonl", key="question_id")
    records = [
        {
            "id": page_order(question_id),
            "category": question["category"],
            "question": question["text"],
            "answers": {"vicuna": vicuna[question_id]["text"], "ours": ours[question_id]["text"]},
            "evaluations": {"vicuna": clean_review(reviews[question_id]["content"])},
            "scores": {"vicuna": reviews[question_id]["tuple"]},
        }
        for question_id, question in questions.items()
    ]
    records.sort(key=lambda record: record["id"])
    with open("webpage/data.json", "w", encoding="utf-8") as file:
        json.dump({"questions": records, "models": MODELS}, file, indent=2)


if __name__ == "__main__":
    main()
