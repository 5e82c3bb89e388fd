"""Answer MMBench (a TSV with base64 images), as ``scripts/v1_5/eval/mmbench.sh``:
``python -m llava.eval.model_vqa_mmbench --model-path ... --question-file mmbench_dev_20230712.tsv --answers-file
answers.jsonl --single-pred-prompt --temperature 0 --conv-mode vicuna_v1`` (``--lang cn`` for MMBench-CN).

Each row (columns ``index, question, hint, A, B, C, D, image, ...``) is asked with its hint and options; with
``--all-rounds`` once per option, the options rotated each round (MMBench's circular evaluation). Answer lines carry
upstream's extra keys: ``round_id`` before ``prompt``, ``options`` and ``option_char`` after ``text``.
Defaults as upstream: ``--conv-mode llava_v1``, ``--temperature 0.2``, up to 1024 new tokens.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Any

from llava.eval import common
from llava.eval.common import get_chunk, split_list  # noqa: F401  (upstream defines them here)

ALL_OPTIONS = ("A", "B", "C", "D")
all_options = list(ALL_OPTIONS)  # upstream's name
REQUIRED_COLUMNS = ("index", "question", "hint", "image", *ALL_OPTIONS)
SINGLE_PRED_PROMPT = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}
# The cells upstream's pandas.read_table reads as missing (its default NA strings), plus upstream's "none".
MISSING_CELLS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip


def is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and (value in MISSING_CELLS or value.lower() in ("nan", "none")))


def get_options(row: dict[str, Any]) -> list[str]:
    """The row's options A, B, ... up to the first missing one."""
    options = []
    for letter in ALL_OPTIONS:
        if letter not in row or is_none(row[letter]):
            break
        options.append(row[letter])
    return options


def _index(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


def read_tsv(path: str, required_columns: tuple[str, ...] = REQUIRED_COLUMNS) -> tuple[list[str], list[dict[str, Any]]]:
    """An MMBench TSV's columns and rows (``index`` as an int, as pandas reads it); missing columns are an error."""
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default field limit
    with open(os.path.expanduser(path), encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file, delimiter="\t")
        columns = list(reader.fieldnames or [])
        missing = [column for column in required_columns if column not in columns]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {', '.join(missing)}; pass an MMBench TSV "
                f"(columns {', '.join(required_columns)}, ...)"
            )
        rows = list(reader)
    for row in rows:
        row["index"] = _index(row["index"])
    return columns, rows


def read_questions(question_file: str) -> list[dict[str, Any]]:
    return read_tsv(question_file)[1]


def mmbench_requests(args: argparse.Namespace):
    instruction = SINGLE_PRED_PROMPT["cn" if args.lang == "cn" else "en"]  # upstream: anything but cn is English

    def to_requests(row: dict[str, Any], config: Any):
        options = get_options(row)
        option_chars = list(ALL_OPTIONS[: len(options)])
        for round_id in range(len(options) if args.all_rounds else 1):
            question = row["question"]
            if not is_none(row["hint"]):
                question = row["hint"] + "\n" + question
            for letter, option in zip(ALL_OPTIONS, options):
                question += "\n" + letter + ". " + option
            query = common.image_query(question, getattr(config, "mm_use_im_start_end", False))
            if args.single_pred_prompt:
                query += "\n" + instruction
            yield common.Request(
                question_id=row["index"], prompt=question, query=query, image_base64=row["image"],
                before_prompt={"round_id": round_id},
                after_text={"options": list(options), "option_char": list(option_chars)},
            )  # fmt: skip
            options = options[1:] + options[:1]
            option_chars = option_chars[1:] + option_chars[:1]

    return to_requests


def eval_model(args: argparse.Namespace) -> int:
    common.check_args(args)
    questions = read_questions(args.question_file)
    return common.run(args, questions, mmbench_requests(args), switch_plain_models=True)


def build_parser() -> argparse.ArgumentParser:
    parser = common.build_parser(
        "Answer MMBench questions (TSV with base64 images).",
        question_file="tables/question.jsonl", conv_mode="llava_v1", max_new_tokens=1024,
    )  # fmt: skip
    parser.add_argument("--all-rounds", action="store_true", help="ask once per option, rotating the options")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option's letter only")
    parser.add_argument("--lang", type=str, default="en", help="en, or cn for MMBench-CN's answer instruction")
    return parser


def main(argv: list[str] | None = None) -> int:
    common.configure_logging()
    return eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
