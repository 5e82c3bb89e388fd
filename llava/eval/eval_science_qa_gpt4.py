"""ScienceQA accuracy of GPT-4's answers with ours as the fallback (upstream's ``eval_science_qa_gpt4``, same flags):

    python llava/eval/eval_science_qa_gpt4.py --base-dir scienceqa --gpt4-result gpt4.json --our-result answers.jsonl

Both answers are read with "The answer is X."; where GPT-4 gave none, ours counts. Prints the accuracy, the upper
bound (either right) and how often GPT-4 gave no answer. A problem without an answer from both is skipped. Upstream
guesses a random option for an unreadable answer; here it scores as wrong (docs/upstream_differences.md #24).
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from llava.eval.answers import read_jsonl
from llava.eval.eval_science_qa import DEFAULT_OPTIONS, FAILED, answer_is, convert_caps, get_pred_idx, load_split

__all__ = ["convert_caps", "get_args", "get_pred_idx", "main"]


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-dir", type=str, required=True)
    parser.add_argument("--gpt4-result", type=str, required=True)
    parser.add_argument("--our-result", type=str, required=True)
    parser.add_argument("--split", type=str, default="test")
    parser.add_argument("--options", type=list, default=DEFAULT_OPTIONS)
    return parser.parse_args(argv)


def read_gpt4_outputs(path: str) -> dict[str, str]:
    import json

    with open(path, encoding="utf-8") as file:
        return json.load(file)["outputs"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args(argv)
    ours = {prediction["question_id"]: prediction for prediction in read_jsonl(args.our_result)}
    gpt4 = read_gpt4_outputs(args.gpt4_result)
    results: Counter = Counter()
    for problem_id, problem in load_split(args.base_dir, args.split).items():
        if problem_id not in ours or problem_id not in gpt4:
            continue
        our_index = get_pred_idx(answer_is(ours[problem_id]["text"]), problem["choices"], args.options)
        gpt4_answer = answer_is(gpt4[problem_id])
        gpt4_index = get_pred_idx(gpt4_answer, problem["choices"], args.options)
        if gpt4_answer == FAILED:
            results["gpt4_failed"] += 1
            gpt4_index = our_index
        results["correct" if gpt4_index == problem["answer"] else "incorrect"] += 1
        results["correct_upperbound"] += problem["answer"] in (gpt4_index, our_index)
    total = results["correct"] + results["incorrect"]
    if total == 0:
        raise SystemExit(f"error: no problem of split {args.split!r} has an answer in both result files")
    print(f"Total: {total}, Correct: {results['correct']}, Accuracy: {results['correct'] / total * 100:.2f}%")
    print(
        f"Total: {total}, Correct (upper): {results['correct_upperbound']}, "
        f"Accuracy: {results['correct_upperbound'] / total * 100:.2f}%"
    )
    print(
        f"Total: {total}, GPT-4 NO-ANS (RANDOM): {results['gpt4_failed']}, "
        f"Percentage: {results['gpt4_failed'] / total * 100:.2f}%"
    )
    return dict(results, total=total)


if __name__ == "__main__":
    main()
