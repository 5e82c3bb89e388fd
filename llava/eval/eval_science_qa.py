"""Score ScienceQA answers, as ``scripts/v1_5/eval/sqa.sh``: ``python llava/eval/eval_science_qa.py --base-dir
scienceqa --result-file answers.jsonl --output-file output.jsonl --output-result result.json``.

``--base-dir`` holds ScienceQA's ``pid_splits.json`` and ``problems.json``. An answer counts when it names the right
option: the bare letter (``B``), a letter followed by ``". "`` (``B. text``), or exactly one ``The answer is B.``;
anything else (and a question without an answer) is FAILED. Prints total, correct, accuracy and the accuracy on
image questions (answers whose prompt holds ``<image>``), and writes upstream's two files: ``--output-file`` with the
correct/incorrect analyses and ``--output-result`` with ``acc``, ``correct``, ``count`` and per-question
``results`` (the chosen option's index, -1 when none) and ``outputs``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

DEFAULT_OPTIONS = ["A", "B", "C", "D", "E"]
FAILED = "FAILED"
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_answer(text: str, options: list[str]) -> str:
    """The option letter an answer names, or FAILED."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else FAILED


def answer_is(text: str) -> str:
    """The letter of exactly one "The answer is X." in ``text``, or FAILED (the GPT-4 scorers' only rule)."""
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else FAILED


def load_split(base_dir: str, split: str) -> dict[str, dict[str, Any]]:
    """The problems of ``split`` (``pid_splits.json`` and ``problems.json`` in ``base_dir``), by id."""
    with open(os.path.join(base_dir, "pid_splits.json"), encoding="utf-8") as file:
        splits = json.load(file)
    if split not in splits:
        raise ValueError(f"{base_dir}/pid_splits.json has no split {split!r}; it has {', '.join(sorted(splits))}")
    with open(os.path.join(base_dir, "problems.json"), encoding="utf-8") as file:
        problems = json.load(file)
    return {problem_id: problems[problem_id] for problem_id in splits[split]}


def get_pred_idx(prediction: str, choices: list[Any], options: list[str]) -> int:
    """The index of ``prediction`` among this problem's options, or -1."""
    return options.index(prediction) if prediction in options[: len(choices)] else -1


def evaluate(base_dir: str, result_file: str, split: str = "test", options: list[str] | None = None) -> dict[str, Any]:
    """``{"analyses": {"correct": [...], "incorrect": [...]}, "sqa_results": {...}}``: upstream's two outputs."""
    options = list(options or DEFAULT_OPTIONS)
    problems = load_split(base_dir, split)  # a problem listed twice counts once, as upstream
    with open(result_file, encoding="utf-8") as file:
        predictions = {pred["question_id"]: pred for pred in map(json.loads, filter(str.strip, file))}

    analyses: dict[str, list[dict[str, Any]]] = {"correct": [], "incorrect": []}
    sqa_results: dict[str, Any] = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    for problem_id, problem in problems.items():
        prediction = predictions.get(problem_id, {"text": FAILED, "prompt": "Unknown"})
        text = prediction["text"]
        answer = parse_answer(text, options)
        index = get_pred_idx(answer, problem["choices"], options)
        analysis = {
            "question_id": problem_id,
            "parsed_ans": answer,
            "ground_truth": options[problem["answer"]],
            "question": prediction["prompt"],
            "pred": text,
            "is_multimodal": "<image>" in prediction["prompt"],
        }
        sqa_results["results"][problem_id] = index
        sqa_results["outputs"][problem_id] = text
        analyses["correct" if index == problem["answer"] else "incorrect"].append(analysis)

    correct, total = len(analyses["correct"]), len(analyses["correct"]) + len(analyses["incorrect"])
    if total == 0:
        raise ValueError(f"split {split!r} of {base_dir}/pid_splits.json is empty")
    image_correct = sum(1 for analysis in analyses["correct"] if analysis["is_multimodal"])
    image_total = image_correct + sum(1 for analysis in analyses["incorrect"] if analysis["is_multimodal"])
    # Upstream divided by zero on a split without image questions.
    image_accuracy = f"{image_correct / image_total * 100:.2f}%" if image_total else "n/a"
    print(f"Total: {total}, Correct: {correct}, Accuracy: {correct / total * 100:.2f}%, IMG-Accuracy: {image_accuracy}")
    sqa_results.update(acc=correct / total * 100, correct=correct, count=total)
    return {"analyses": analyses, "sqa_results": sqa_results}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score ScienceQA answers.")
    parser.add_argument("--base-dir", type=str, required=True)
    parser.add_argument("--result-file", type=str, required=True)
    parser.add_argument("--output-file", type=str, required=True)
    parser.add_argument("--output-result", type=str, required=True)
    parser.add_argument("--split", type=str, default="test")
    # As upstream: a string given on the command line becomes its letters ("--options ABCD").
    parser.add_argument("--options", type=list, default=DEFAULT_OPTIONS)
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line (upstream's name)."""
    return build_parser().parse_args(argv)


def convert_caps(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answer lines as COCO-style captions, ``{"image_id": int(question_id), "caption": text}`` (upstream's helper)."""
    return [{"image_id": int(result["question_id"]), "caption": result["text"]} for result in results]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args(argv)
    outcome = evaluate(args.base_dir, args.result_file, args.split, args.options)
    with open(args.output_file, "w", encoding="utf-8") as file:
        json.dump(outcome["analyses"], file, indent=2)
    with open(args.output_result, "w", encoding="utf-8") as file:
        json.dump(outcome["sqa_results"], file, indent=2)
    return outcome


if __name__ == "__main__":
    main()
