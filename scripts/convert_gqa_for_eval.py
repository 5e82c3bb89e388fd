"""Turn an answers file into GQA's predictions file, as ``scripts/v1_5/eval/gqa.sh``:
``python scripts/convert_gqa_for_eval.py --src merge.jsonl --dst testdev_balanced_predictions.json``.

Writes ``[{"questionId": ..., "prediction": ...}]``: each answer lower-cased with trailing periods removed (GQA's
own ``eval/eval.py`` then scores it).
"""

from __future__ import annotations

import argparse
import json


def convert(src: str, dst: str) -> list[dict]:
    predictions = []
    with open(src, encoding="utf-8") as file:
        for line in filter(str.strip, file):
            answer = json.loads(line)
            predictions.append({"questionId": answer["question_id"], "prediction": answer["text"].rstrip(".").lower()})
    with open(dst, "w", encoding="utf-8") as file:
        json.dump(predictions, file)
    return predictions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answers file -> GQA predictions.")
    parser.add_argument("--src", type=str, required=True)
    parser.add_argument("--dst", type=str, required=True)
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    return convert(args.src, args.dst)


if __name__ == "__main__":
    main()
