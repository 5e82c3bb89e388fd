"""Turn MMBench answers into the spreadsheet MMBench's server scores, as ``scripts/v1_5/eval/mmbench.sh``:
``python scripts/convert_mmbench_for_submission.py --annotation-file mmbench_dev_20230712.tsv --result-dir
answers/<split> --upload-dir answers_upload/<split> --experiment llava-v1.5-13b``.

Reads ``<result-dir>/<experiment>.jsonl`` and writes ``<upload-dir>/<experiment>.xlsx``: the TSV's rows without the
columns ``hint, category, source, image, comment, l2-category``, with a ``prediction`` column inserted as the 7th
(after ``index, question, A, B, C, D``), holding each row's answer (the last round's with ``--all-rounds``, as
upstream). Needs ``openpyxl`` (``pip install -e ".[eval]"``).
"""

from __future__ import annotations

import argparse
import os

from llava.eval.answers import read_jsonl
from llava.eval.model_vqa_mmbench import is_none, read_tsv

DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
PREDICTION_COLUMN = "prediction"
PREDICTION_POSITION = 6


def convert(annotation_file: str, result_dir: str, upload_dir: str, experiment: str) -> str:
    from openpyxl import Workbook

    columns, rows = read_tsv(annotation_file, required_columns=("index", *DROPPED_COLUMNS))
    kept = [column for column in columns if column not in DROPPED_COLUMNS]
    kept.insert(PREDICTION_POSITION, PREDICTION_COLUMN)
    predictions = {}
    for answer in read_jsonl(os.path.join(result_dir, f"{experiment}.jsonl")):
        predictions[answer["question_id"]] = answer["text"]
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"  # pandas' default sheet name
    sheet.append(kept)
    for row in rows:
        cells = {**row, PREDICTION_COLUMN: predictions.get(row["index"])}
        sheet.append([None if is_none(cells[column]) else cells[column] for column in kept])
    os.makedirs(upload_dir, exist_ok=True)
    path = os.path.join(upload_dir, f"{experiment}.xlsx")
    workbook.save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MMBench answers -> submission spreadsheet.")
    parser.add_argument("--annotation-file", type=str, required=True)
    parser.add_argument("--result-dir", type=str, required=True)
    parser.add_argument("--upload-dir", type=str, required=True)
    parser.add_argument("--experiment", type=str, required=True)
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    return convert(args.annotation_file, args.result_dir, args.upload_dir, args.experiment)


if __name__ == "__main__":
    main()
