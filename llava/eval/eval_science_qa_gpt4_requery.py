"""ScienceQA accuracy after re-asking GPT-4 (upstream's ``eval_science_qa_gpt4_requery``, same flags):

    python llava/eval/eval_science_qa_gpt4_requery.py --base-dir scienceqa --gpt4-result gpt4.json \
        --requery-result requery.jsonl --our-result answers.jsonl --output-result result.json

The requeried answer counts where it names an option ("The answer is X."), ours otherwise. Prints our, GPT-4's,
GPT-4-with-our-fallback, the requery's and the upper-bound accuracy, and each requeried answer that is wrong; writes
upstream's result file (``acc``, ``correct``, ``count``, per-problem ``results``). Every problem of the split needs
an answer from us and from GPT-4. An unreadable answer scores as wrong (upstream guesses a random option).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from llava.eval.answers import read_jsonl
from llava.eval.eval_science_qa import DEFAULT_OPTIONS, FAILED, answer_is, convert_caps, get_pred_idx, load_split
from llava.eval.eval_science_qa_gpt4 import read_gpt4_outputs

__all__ = ["convert_caps", "get_args", "get_pred_idx", "main"]

MISSING = "MISSING"


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-dir", type=str, required=True)
    parser.add_argument("--gpt4-result", type=str, required=True)
    parser.add_argument("--requery-result", type=str, required=True)
    parser.add_argument("--our-result", type=str, required=True)
    parser.add_argument("--output-result", type=str, required=True)
    parser.add_argument("--split", type=str, default="test")
    parser.add_argument("--options", type=list, default=DEFAULT_OPTIONS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args(argv)
    ours = {prediction["question_id"]: prediction for prediction in read_jsonl(args.our_result)}
    requery = {prediction["question_id"]: prediction["text"] for prediction in read_jsonl(args.requery_result)}
    gpt4 = read_gpt4_outputs(args.gpt4_result)
    results: Counter = Counter()
    sqa_results: dict[str, Any] = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    for problem_id, problem in load_split(args.base_dir, args.split).items():
        missing = [
            name for name, answers in (("--our-result", ours), ("--gpt4-result", gpt4)) if problem_id not in answers
        ]
        if missing:
            raise ValueError(f"problem {problem_id} has no answer in {' and '.join(missing)}")
        if problem_id not in requery:
            results["missing_requery"] += 1
        answers = {
            "our": answer_is(ours[problem_id]["text"]),
            "gpt4": answer_is(gpt4[problem_id]),
            "requery": answer_is(requery.get(problem_id, MISSING)),
        }
        index = {name: get_pred_idx(answer, problem["choices"], args.options) for name, answer in answers.items()}
        right = {name: value == problem["answer"] for name, value in index.items()}
        results["total"] += 1
        results["gpt4_correct"] += right["gpt4"]
        results["gpt4_ourvisual_correct"] += right["our"] if answers["gpt4"] == FAILED else right["gpt4"]
        results["our_correct"] += right["our"]
        chosen = "our" if answers["requery"] == FAILED else "requery"
        sqa_results["results"][problem_id] = index[chosen]
        results["requery_correct"] += right[chosen]
        if chosen == "requery" and not right["requery"]:
            print(
                f"\nQuestion ({args.options[problem['answer']]}): {ours[problem_id]['prompt']}\n"
                f"Our ({answers['our']}): {ours[problem_id]['text']}\nGPT-4 ({answers['gpt4']}): {gpt4[problem_id]}\n"
                f"Requery ({answers['requery']}): {requery[problem_id]}\n====================================="
            )
        results["gpt4_failed"] += answers["gpt4"] == FAILED
        results["correct_upperbound"] += right["gpt4"] or right["our"]
    total = results["total"]
    rows = [("Our-Correct", "our_correct"), ("GPT-4-Correct", "gpt4_correct"), ("GPT-4 NO-ANS (RANDOM)", "gpt4_failed"),
            ("GPT-4-OursVisual-Correct", "gpt4_ourvisual_correct"), ("Requery-Correct", "requery_correct"),
            ("Correct upper", "correct_upperbound")]  # fmt: skip
    for label, key in rows:
        share = "Percentage" if key == "gpt4_failed" else "Accuracy"
        print(f"Total: {total}, {label}: {results[key]}, {share}: {results[key] / total * 100:.2f}%")
    sqa_results.update(acc=results["requery_correct"] / total * 100, correct=results["requery_correct"], count=total)
    with open(args.output_result, "w", encoding="utf-8") as file:
        json.dump(sqa_results, file, indent=2)
    return dict(results)


if __name__ == "__main__":
    main()
