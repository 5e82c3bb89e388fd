"""Score POPE answers, as ``scripts/v1_5/eval/pope.sh``: ``python llava/eval/eval_pope.py --annotation-dir
pope/coco --question-file llava_pope_test.jsonl --result-file answers.jsonl``.

Every ``coco_pope_<category>.json`` in ``--annotation-dir`` (JSON lines with a ``label`` of "yes"/"no") is scored
against the answers whose question has that ``category``, paired in order, as upstream does. An answer is "no" when
its first sentence, commas removed, has the word ``No``, ``no`` or ``not``; otherwise "yes". Prints upstream's table
(TP FP TN FN, accuracy, precision, recall, F1, yes ratio) per category.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from llava.eval.answers import read_jsonl

ANNOTATION_PREFIX = "coco_pope_"
ANNOTATION_SUFFIX = ".json"
NEGATIVE_WORDS = ("No", "not", "no")


def parse_yes_no(text: str) -> str:
    """Upstream's reading of an answer: "no" if its first sentence says no/not, else "yes"."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(word in words for word in NEGATIVE_WORDS) else "yes"


@dataclass
class PopeScores:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.total

    # Undefined ratios (no "yes" predicted, no positive label) are 0 here; upstream divided by zero.
    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        both = self.precision + self.recall
        return 2 * self.precision * self.recall / both if both else 0.0

    @property
    def yes_ratio(self) -> float:
        return (self.tp + self.fp) / self.total


def eval_pope(answers: list[dict], label_file: str) -> PopeScores:
    """Score ``answers`` (answers-file lines) against the labels of ``label_file``, paired in order."""
    labels = [record["label"] for record in read_jsonl(label_file)]
    if len(answers) > len(labels):
        raise ValueError(f"{len(answers)} answers but only {len(labels)} labels in {label_file}")
    if not answers:
        raise ValueError(f"no answers for the questions of {label_file}; check --question-file and --result-file")
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for answer, label in zip(answers, labels):
        predicted_yes = parse_yes_no(answer["text"]) == "yes"
        label_yes = label != "no"
        key = ("t" if predicted_yes == label_yes else "f") + ("p" if predicted_yes else "n")
        counts[key] += 1
    return PopeScores(**counts)


def print_scores(scores: PopeScores) -> None:
    print("TP\tFP\tTN\tFN\t")
    print(f"{scores.tp}\t{scores.fp}\t{scores.tn}\t{scores.fn}")
    print(f"Accuracy: {scores.accuracy}")
    print(f"Precision: {scores.precision}")
    print(f"Recall: {scores.recall}")
    print(f"F1 score: {scores.f1}")
    print(f"Yes ratio: {scores.yes_ratio}")
    print(
        f"{scores.f1:.3f}, {scores.accuracy:.3f}, {scores.precision:.3f}, {scores.recall:.3f}, {scores.yes_ratio:.3f}"
    )


def evaluate(annotation_dir: str, question_file: str, result_file: str) -> dict[str, PopeScores]:
    """Scores per category, printed as upstream prints them."""
    questions = {question["question_id"]: question for question in read_jsonl(question_file)}
    answers = read_jsonl(result_file)
    unknown = [answer["question_id"] for answer in answers if answer["question_id"] not in questions]
    if unknown:
        raise ValueError(f"{result_file} answers questions not in {question_file}: {unknown[:5]}")
    results = {}
    for name in sorted(os.listdir(annotation_dir)):
        if not (name.startswith(ANNOTATION_PREFIX) and name.endswith(ANNOTATION_SUFFIX)):
            raise ValueError(
                f"{os.path.join(annotation_dir, name)} is not a POPE annotation file "
                f"({ANNOTATION_PREFIX}<category>{ANNOTATION_SUFFIX}); keep only those in --annotation-dir"
            )
        category = name.removeprefix(ANNOTATION_PREFIX).removesuffix(ANNOTATION_SUFFIX)
        in_category = [answer for answer in answers if questions[answer["question_id"]]["category"] == category]
        print(f"Category: {category}, # samples: {len(in_category)}")
        results[category] = eval_pope(in_category, os.path.join(annotation_dir, name))
        print_scores(results[category])
        print("====================================")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score POPE answers per category.")
    parser.add_argument("--annotation-dir", type=str, required=True)
    parser.add_argument("--question-file", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    return parser


def main(argv: list[str] | None = None) -> dict[str, PopeScores]:
    args = build_parser().parse_args(argv)
    return evaluate(args.annotation_dir, args.question_file, args.result_file)


if __name__ == "__main__":
    main()
