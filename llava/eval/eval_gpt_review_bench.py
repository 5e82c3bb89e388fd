"""GPT-4 review of LLaVA-Bench (in-the-wild) answers against a reference answers file (upstream's
``eval_gpt_review_bench``, same flags; ``scripts/v1_5/eval/llavabench.sh`` runs it):

    python llava/eval/eval_gpt_review_bench.py --question questions.jsonl --context context.jsonl \
        --rule llava/eval/table/rule.json --answer-list answers_gpt4.jsonl answers/my-run.jsonl --output review.jsonl

Each question's image caption (from ``--context``) goes into the prompt; the rule is ``llava_bench_<category>``. An
existing ``--output`` is continued, not redone. The API: :mod:`llava.eval.gpt`.
"""

from __future__ import annotations

import argparse

from llava.eval.answers import read_jsonl
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

MODEL = "gpt-4-0314"
NUM_SECONDS_TO_SLEEP = 0.5
CATEGORY_PREFIX = "llava_bench_"

get_eval = make_get_eval(MODEL, NUM_SECONDS_TO_SLEEP)


def caption_context(context: dict) -> str:
    caption = context["caption"]
    return "\n".join(caption) if isinstance(caption, list) else caption


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ChatGPT-based QA evaluation.")
    add_review_arguments(parser, model=MODEL, request_interval=NUM_SECONDS_TO_SLEEP, workers=1, context=True)
    return parser


def review_jobs(args: argparse.Namespace, context_text, category_prefix: str) -> list[ReviewJob]:
    """The jobs of a visual benchmark: the image's context, ``category_prefix + category``'s rule (shared with
    :mod:`llava.eval.eval_gpt_review_visual`)."""
    questions, first, second, rules = read_inputs(args)
    contexts = {context["image"]: context for context in read_jsonl(args.context)}
    jobs = []
    for index, (question, answer1, answer2) in enumerate(zip(questions, first, second)):
        category = category_prefix + question["category"]
        if category not in rules:
            raise ValueError(f"{args.rule} has no rule for the visual QA category {category!r}")
        if question["image"] not in contexts:
            raise ValueError(f"{args.context} has no context for image {question['image']!r}")
        line = dict(
            id=index + 1, question_id=question["question_id"],
            answer1_id=answer1.get("answer_id", answer1["question_id"]),
            answer2_id=answer2.get("answer_id", answer2["answer_id"]), category=category,
        )  # fmt: skip
        content = review_content(
            question["text"],
            answer1["text"],
            answer2["text"],
            rules[category],
            context_text(contexts[question["image"]]),
        )
        jobs.append(ReviewJob(content, line))
    return jobs


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    return write_reviews(review_jobs(args, caption_context, CATEGORY_PREFIX), args, resume=True)


if __name__ == "__main__":
    main()
