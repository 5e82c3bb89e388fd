"""Score TextVQA answers, as ``scripts/v1_5/eval/textvqa.sh``: ``python -m llava.eval.eval_textvqa
--annotation-file TextVQA_0.5.1_val.json --result-file answers.jsonl`` (or ``--result-dir`` for every ``.jsonl``).

Each answer is matched to its annotation by ``(question_id, question)``: LLaVA's TextVQA question file uses the
image id as ``question_id``, and the question is recovered from the recorded prompt (the forms upstream's question
files use, see :func:`prompt_processor`). Accuracy is TextVQA's soft accuracy after the VQA answer normalisation
(:mod:`llava.eval.m4c_evaluator`).
"""

from __future__ import annotations

import argparse
import json
import os
import re

from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator

_OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)
REFERENCE_OCR = "Reference OCR token: "


def prompt_processor(prompt: str) -> str:
    """The question inside a recorded prompt, lower-cased. Accepted forms (upstream's):

    - ``OCR tokens: ... Question: <q> Short answer:``
    - three lines, one of them the reference OCR tokens: ``Reference OCR token: ...\\n<q>\\n<instruction>`` or
      ``<q>\\nReference OCR token: ...\\n<instruction>``
    - two lines: ``<q>\\n<instruction>``
    """
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_QUESTION.search(prompt)
        if match is None:
            raise ValueError(f"prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:': {prompt!r}")
        question = match.group(1)
    elif REFERENCE_OCR in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith(REFERENCE_OCR.strip()) else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(
            f"cannot find the question in the prompt {prompt!r}: expected '<question>\\n<instruction>', a "
            "'Reference OCR token: ' line, or 'OCR tokens: ... Question: ... Short answer:'"
        )
    return question.lower()


def eval_single(annotation_file: str, result_file: str) -> float:
    """Accuracy (0..1) of one answers file; prints upstream's report."""
    experiment_name = os.path.splitext(os.path.basename(result_file))[0]
    print(experiment_name)
    with open(annotation_file, encoding="utf-8") as file:
        annotations = json.load(file)["data"]
    by_key = {(annotation["image_id"], annotation["question"].lower()): annotation for annotation in annotations}
    pred_list = []
    with open(result_file, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            result = json.loads(line)
            key = (result["question_id"], prompt_processor(result["prompt"]))
            if key not in by_key:
                raise ValueError(
                    f"{result_file}, line {number}: no annotation in {annotation_file} for image {key[0]!r} and "
                    f"question {key[1]!r}"
                )
            pred_list.append({"pred_answer": result["text"], "gt_answers": by_key[key]["answers"]})
    accuracy = TextVQAAccuracyEvaluator().eval_pred_list(pred_list)
    print(f"Samples: {len(pred_list)}\nAccuracy: {100.0 * accuracy:.2f}%\n")
    return accuracy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score TextVQA answers files.")
    parser.add_argument("--annotation-file", type=str, required=True)
    parser.add_argument("--result-file", type=str)
    parser.add_argument("--result-dir", type=str)
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line (upstream's name)."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = get_args(argv)
    accuracies = {}
    if args.result_file is not None:
        accuracies[args.result_file] = eval_single(args.annotation_file, args.result_file)
    if args.result_dir is not None:
        for name in sorted(os.listdir(args.result_dir)):
            if not name.endswith(".jsonl"):
                print(f"Skipping {name}")
                continue
            path = os.path.join(args.result_dir, name)
            accuracies[path] = eval_single(args.annotation_file, path)
    return accuracies


if __name__ == "__main__":
    main()
