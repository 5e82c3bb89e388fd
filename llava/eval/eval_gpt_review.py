"""GPT-4 review of two answers files on text questions (upstream's ``eval_gpt_review``, same flags):

    python llava/eval/eval_gpt_review.py -q question.jsonl -a answers_a.jsonl answers_b.jsonl -r rule.json -o review.jsonl

On today's ``openai`` client, against OpenAI or any OpenAI-compatible server (``--api-base``; see
:mod:`llava.eval.gpt`); upstream's ray pool is a thread pool (``--workers``). Review lines as
:mod:`llava.eval.gpt_review` describes; the output is rewritten.
"""

from __future__ import annotations

import argparse

from llava.eval.gpt_review import (
    ReviewJob,
    add_review_arguments,
    make_get_eval,
    parse_score,
    read_inputs,
    review_content,
    write_reviews,
)

__all__ = ["NUM_SECONDS_TO_SLEEP", "get_eval", "parse_score", "main"]

MODEL = "gpt-4"
NUM_SECONDS_TO_SLEEP = 3

get_eval = make_get_eval(MODEL, NUM_SECONDS_TO_SLEEP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ChatGPT-based QA evaluation.")
    add_review_arguments(parser, model=MODEL, request_interval=NUM_SECONDS_TO_SLEEP, workers=4, context=False)
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    questions, first, second, rules = read_inputs(args)
    jobs = []
    for index, (question, answer1, answer2) in enumerate(zip(questions, first, second)):
        category = question["category"]
        rule = rules.get(category, rules["default"])
        line = dict(id=index + 1, question_id=question["question_id"], answer1_id=answer1["answer_id"],
                    answer2_id=answer2["answer_id"], category=category)  # fmt: skip
        jobs.append(ReviewJob(review_content(question["text"], answer1["text"], answer2["text"], rule), line))
    return write_reviews(jobs, args, resume=False)


if __name__ == "__main__":
    main()
