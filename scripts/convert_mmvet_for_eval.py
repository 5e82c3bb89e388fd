"""MM-Vet answers as its evaluator's upload file, as ``scripts/v1_5/eval/mmvet.sh``:
``python scripts/convert_mmvet_for_eval.py --src answers/my-run.jsonl --dst results/my-run.json``.

The answers file's lines become ``{"v1_<question_id>": text}`` (MM-Vet's ids), written as indented JSON.
"""

from __future__ import annotations

import argparse
import json

from llava.eval.answers import read_jsonl

MMVET_ID_PREFIX = "v1_"


def convert(src: str, dst: str) -> dict[str, str]:
    results = {f"{MMVET_ID_PREFIX}{line['question_id']}": line["text"] for line in read_jsonl(src)}
    with open(dst, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert MM-Vet answers for its evaluator.")
    parser.add_argument("--src", type=str, required=True)
    parser.add_argument("--dst", type=str, required=True)
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    convert(args.src, args.dst)
