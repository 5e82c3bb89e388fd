"""Scores from GPT review files (upstream's ``summarize_gpt_review``, same flags; ``llavabench.sh`` runs it):

    python llava/eval/summarize_gpt_review.py -f reviews/my-run.jsonl      # or -d reviews/ [-s words] [-v 0613]

For each review file and each category (and ``all``) it prints upstream's line: the category, the second answer's
mean score relative to the first's (%), and both means times ten.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import numpy as np

REVIEW_PREFIXES = ("gpt4_text", "reviews_", "review_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ChatGPT-based QA evaluation.")
    parser.add_argument("-d", "--dir", default=None)
    parser.add_argument("-v", "--version", default=None)
    parser.add_argument("-s", "--select", nargs="*", default=None)
    parser.add_argument("-f", "--files", nargs="*", default=[])
    parser.add_argument("-i", "--ignore", nargs="*", default=[])
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line (upstream's name)."""
    return build_parser().parse_args(argv)


def review_files(args: argparse.Namespace) -> list[str]:
    if args.files:
        return sorted(args.files)
    if args.dir is None:
        raise SystemExit("error: pass the review files (-f) or their folder (-d)")
    return sorted(
        name for name in os.listdir(args.dir)
        if name.endswith(".jsonl") and (name.startswith(REVIEW_PREFIXES) or "review" in args.dir)
    )  # fmt: skip


def summarize(path: str, ignore: set[int]) -> dict[str, list[float]]:
    """``{category: [relative %, first * 10, second * 10]}`` of one review file (``all`` included)."""
    scores = defaultdict(list)
    with open(path, encoding="utf-8") as file:
        for line in filter(str.strip, file):
            review = json.loads(line)
            if review["question_id"] in ignore:
                continue
            pair = review["tuple"] if "tuple" in review else review["score"]
            if "category" in review:
                scores[review["category"]].append(pair)
            scores["all"].append(pair)
    summary = {}
    for category, pairs in sorted(scores.items()):
        first, second = (round(value, 3) for value in np.asarray(pairs).mean(0).tolist())
        summary[category] = [round(second / first * 100, 1), round(first * 10, 1), round(second * 10, 1)]
    return summary


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    args = parse_args(argv)
    ignore = {int(question_id) for question_id in args.ignore}
    results = {}
    for name in review_files(args):
        config = os.path.basename(name).replace("gpt4_text_", "").replace(".jsonl", "")
        if args.select is not None and any(word not in config for word in args.select):
            continue
        version = "0613" if "0613" in config else "0314"
        if args.version is not None and args.version != version:
            continue
        print(config)
        results[config] = summarize(os.path.join(args.dir, name) if args.dir is not None else name, ignore)
        for category, (relative, first, second) in results[config].items():
            print(category, relative, first, second)
        print("=================================")
    return results


if __name__ == "__main__":
    main()
