"""ScienceQA as LLaVA training data (upstream's script, same commands, as its ``finetune_sqa.sh`` expects):

    python scripts/convert_sqa_to_llava.py convert_to_llava --base-dir /path/to/scienceqa --split train \
        [--prompt-format QCM-LEA]       # -> <base-dir>/llava_train_QCM-LEA.json
    python scripts/convert_sqa_to_llava.py convert_to_jsonl --base-dir /path/to/scienceqa --split train \
        [--prompt-format QCM-LEPA]      # -> <base-dir>/scienceqa_train_QCM-LEPA.jsonl

``--base-dir`` holds ScienceQA's ``pid_splits.json`` and ``problems.json``; image problems refer to
``<problem id>/<image>`` (the images folder's layout). The prompt formats: ``convert_sqa_to_llava_base_prompt``.
Upstream's command line is python-fire's; both ``--base-dir`` and ``--base_dir`` spellings work here.
"""

from __future__ import annotations

import argparse
import json
import os

from convert_sqa_to_llava_base_prompt import build_prompt_chatbot

QUESTION_PREFIX = "Question: "
ANSWER_PREFIX = "Answer: "


def _examples(base_dir: str, split: str, prompt_format: str):
    """``(problem id, image path or None, prompt, answer)`` of every problem of ``split``; an image problem's prompt
    ends with ``<image>`` on its own line."""
    with open(os.path.join(base_dir, "pid_splits.json"), encoding="utf-8") as file:
        split_indices = json.load(file)[split]
    with open(os.path.join(base_dir, "problems.json"), encoding="utf-8") as file:
        problems = json.load(file)
    examples = build_prompt_chatbot(problems, split_indices, prompt_format, use_caption=False, is_test=False)
    for problem_id, (text_in, text_out) in examples.items():
        # As upstream: when the text starts with the prefix, every occurrence of it goes.
        if text_in.startswith(QUESTION_PREFIX):
            text_in = text_in.replace(QUESTION_PREFIX, "")
        if text_out.startswith(ANSWER_PREFIX):
            text_out = text_out.replace(ANSWER_PREFIX, "")
        image = problems[problem_id]["image"]
        if image is None:
            yield problem_id, None, text_in, text_out
        else:
            yield problem_id, os.path.join(problem_id, image), f"{text_in}\n<image>", text_out


def _with_image(problem_id: str, image: str | None, **fields) -> dict:
    return {"id": problem_id, **({"image": image} if image is not None else {}), **fields}


def convert_to_llava(base_dir, split, prompt_format="QCM-LEA") -> str:
    records = [
        _with_image(
            problem_id, image, conversations=[{"from": "human", "value": text_in}, {"from": "gpt", "value": text_out}]
        )
        for problem_id, image, text_in, text_out in _examples(base_dir, split, prompt_format)
    ]
    print(f"Number of samples: {len(records)}")
    path = os.path.join(base_dir, f"llava_{split}_{prompt_format}.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(records, file, indent=2)
    return path


def convert_to_jsonl(base_dir, split, prompt_format="QCM-LEPA") -> str:
    path = os.path.join(base_dir, f"scienceqa_{split}_{prompt_format}.jsonl")
    with open(path, "w", encoding="utf-8") as file:
        for problem_id, image, text_in, text_out in _examples(base_dir, split, prompt_format):
            file.write(json.dumps(_with_image(problem_id, image, instruction=text_in, output=text_out)) + "\n")
    return path


TASKS = {"convert_to_llava": (convert_to_llava, "QCM-LEA"), "convert_to_jsonl": (convert_to_jsonl, "QCM-LEPA")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert ScienceQA for LLaVA.")
    tasks = parser.add_subparsers(dest="task", required=True)
    for name, (_, prompt_format) in TASKS.items():
        task = tasks.add_parser(name)
        task.add_argument("--base-dir", "--base_dir", dest="base_dir", required=True)
        task.add_argument("--split", required=True)
        task.add_argument("--prompt-format", "--prompt_format", dest="prompt_format", default=prompt_format)
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    return TASKS[args.task][0](args.base_dir, args.split, args.prompt_format)


if __name__ == "__main__":
    main()
