"""What upstream's three GPT review scorers (``eval_gpt_review``, ``eval_gpt_review_bench``,
``eval_gpt_review_visual``) share: reading the question, answer and rule files, the reviewer's prompt, parsing its
two scores, and writing one review line per question.

A review line is upstream's: ``{"id", "question_id", "answer1_id", "answer2_id", "category", "content", "tuple"}``
(``content`` the reviewer's text, ``tuple`` the two scores, ``[-1, -1]`` when its first line holds no pair), which
``summarize_gpt_review`` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from llava.eval import gpt
from llava.eval.answers import read_jsonl

logger = logging.getLogger(__name__)


def parse_score(review: str) -> list[float]:
    """The two scores on the review's first line (``"8 7"`` or ``"8, 7"``), else ``[-1, -1]`` (as upstream)."""
    first_line = review.split("\n")[0].replace(",", " ")
    parts = first_line.split(" ")
    if len(parts) == 2:
        try:
            return [float(parts[0]), float(parts[1])]
        except ValueError:
            pass
    logger.error("no pair of scores on the review's first line: %r", first_line)
    return [-1, -1]


def review_content(question: str, answer1: str, answer2: str, rule: dict[str, str], context: str | None = None) -> str:
    """The reviewer's prompt: the context (for the visual benchmarks), the question, both answers, the rule."""
    role = rule["role"]
    head = f"[Context]\n{context}\n\n" if context is not None else ""
    return (
        f"{head}[Question]\n{question}\n\n"
        f"[{role} 1]\n{answer1}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer2}\n\n[End of {role} 2]\n\n"
        f"[System]\n{rule['prompt']}\n\n"
    )


def make_get_eval(model: str, retry_seconds: float):
    """Upstream's module-level ``get_eval(content, max_tokens)`` of a scorer: the reviewer's text for one prompt, from
    ``model`` (the client from the environment unless one is passed)."""

    def get_eval(content: str, max_tokens: int, *, client=None, model: str = model) -> str:
        return gpt.review(client or gpt.make_client(), model, content, max_tokens, retry_seconds)

    return get_eval


@dataclass
class ReviewJob:
    content: str
    line: dict[str, Any]  # the review line's fields before "content" and "tuple"


def add_review_arguments(
    parser: argparse.ArgumentParser, *, model: str, request_interval: float, workers: int, context: bool
) -> None:
    """Upstream's flags (``-q -a -r -o --max-tokens``, and ``-c`` for the visual ones) plus the API's and pacing."""
    parser.add_argument("-q", "--question", required=True)
    if context:
        parser.add_argument("-c", "--context", required=True)
    parser.add_argument("-a", "--answer-list", nargs="+", default=[])
    parser.add_argument("-r", "--rule", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--max-tokens", type=int, default=1024, help="maximum number of tokens produced in the output")
    gpt.add_api_arguments(parser, model)
    parser.add_argument(
        "--request-interval", type=float, default=request_interval,
        help=f"seconds between requests and between retries (upstream: {request_interval}; 0 for a local server)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=workers, help="requests in flight at once")


def read_inputs(args: argparse.Namespace) -> tuple[list[dict], list[dict], list[dict], dict[str, dict]]:
    """(questions, first answers, second answers, rules); the answer lists must name two files."""
    if len(args.answer_list) != 2:
        raise SystemExit(f"error: --answer-list takes the two answers files to compare, got {len(args.answer_list)}")
    with open(os.path.expanduser(args.rule), encoding="utf-8") as file:
        rules = json.load(file)
    first, second = (read_jsonl(path) for path in args.answer_list)
    return read_jsonl(args.question), first, second, rules


def write_reviews(jobs: Sequence[ReviewJob], args: argparse.Namespace, *, resume: bool) -> list[dict[str, Any]]:
    """Ask for every job's review and write the review lines to ``args.output`` in order; with ``resume`` the lines
    already there are kept and their questions skipped (upstream's bench and visual scorers)."""
    client = gpt.make_client(args.api_base)
    output = os.path.expanduser(args.output)
    done = read_jsonl(output) if resume and os.path.isfile(output) else []
    if done:
        logger.info("%s already holds %d reviews; asking for the other %d", output, len(done), len(jobs) - len(done))
    todo = list(jobs[len(done) :])
    lines = []
    with open(output, "a" if resume else "w", encoding="utf-8") as file, ThreadPoolExecutor(args.workers) as pool:
        futures = []
        for job in todo:
            futures.append(
                pool.submit(gpt.review, client, args.model, job.content, args.max_tokens, args.request_interval)
            )
            if args.request_interval:
                time.sleep(args.request_interval)
        for job, future in zip(todo, futures):
            text = future.result()
            line = {**job.line, "content": text, "tuple": parse_score(text)}
            file.write(json.dumps(line) + "\n")
            file.flush()
            lines.append(line)
    return lines
