"""Answers of GPT-3.5 to a JSONL file of questions, the text baseline (upstream's ``qa_baseline_gpt35``, same flags):

    python llava/eval/qa_baseline_gpt35.py -q question.jsonl -o answer_gpt35.jsonl

One answers line per question (``answer_id``, ``question_id``, ``model_id``, ``text``), sorted by question id; a
question that still fails after three tries is answered ``#ERROR#``, as upstream. The API: :mod:`llava.eval.gpt`
(``--api-base``, ``--model``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from llava.eval import gpt
from llava.eval.answers import read_jsonl, short_uuid

logger = logging.getLogger(__name__)

MODEL = "gpt-3.5-turbo"
MODEL_ID = "gpt-3.5-turbo:20230327"
ERROR_TEXT = "#ERROR#"
TRIES = 3
RETRY_SECONDS = 1
SYSTEM_PROMPT = "You are a helpful assistant."


def get_answer(question_id, question: str, max_tokens: int, *, client=None, model: str = MODEL) -> dict:
    """One answers line (upstream's function; the client from the environment by default)."""
    import openai

    answer = {"answer_id": short_uuid(), "question_id": question_id, "model_id": MODEL_ID}
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    try:
        answer["text"] = gpt.chat(
            client or gpt.make_client(), model, messages, retry_seconds=RETRY_SECONDS, retries=TRIES - 1,
            max_tokens=max_tokens,
        )  # fmt: skip
    except openai.APIError as error:
        logger.error("question %s: %s", question_id, error)
        answer["text"] = ERROR_TEXT
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ChatGPT answer generation.")
    parser.add_argument("-q", "--question", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--max-tokens", type=int, default=1024, help="maximum number of tokens produced in the output")
    gpt.add_api_arguments(parser, MODEL)
    parser.add_argument("--workers", type=int, default=32, help="requests in flight at once (upstream: 32)")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    client = gpt.make_client(args.api_base)
    questions = {question["question_id"]: question["text"] for question in read_jsonl(args.question)}
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [
            pool.submit(get_answer, question_id, text, args.max_tokens, client=client, model=args.model)
            for question_id, text in questions.items()
        ]
        answers = sorted((future.result() for future in futures), key=lambda answer: answer["question_id"])
    with open(os.path.expanduser(args.output), "w", encoding="utf-8") as file:
        file.write("\n".join(json.dumps(answer) for answer in answers))  # no final newline, as upstream
    return answers


if __name__ == "__main__":
    main()
