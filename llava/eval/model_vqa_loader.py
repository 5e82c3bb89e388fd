"""Answer a JSONL question file with images prepared in DataLoader workers, as upstream's benchmark scripts
(``scripts/v1_5/eval/{gqa,vqav2,vizwiz,textvqa,pope,seed}.sh``) call it:
``python -m llava.eval.model_vqa_loader --model-path ... --question-file ... --image-folder ... --answers-file ...
--num-chunks N --chunk-idx K --temperature 0 --conv-mode vicuna_v1``.

Same question and answer lines as :mod:`llava.eval.model_vqa`; defaults as upstream: ``--conv-mode llava_v1``,
``--max_new_tokens 128``, 4 loader workers (``--num-workers``), and a "plain" (projector-pretraining) model switched
to the ``*_mmtag`` template. ``--batch-size N`` generates N questions together (upstream allowed only 1).
"""

from __future__ import annotations

import argparse

from llava.eval import common
from llava.eval.common import get_chunk, split_list  # noqa: F401  (upstream defines them here)
from llava.eval.model_vqa import image_requests, read_questions

UPSTREAM_LOADER_WORKERS = 4


def eval_model(args: argparse.Namespace) -> int:
    common.check_args(args)
    questions = read_questions(args.question_file)
    return common.run(args, questions, image_requests(args.image_folder), switch_plain_models=True)


def build_parser() -> argparse.ArgumentParser:
    return common.build_parser(
        "Answer a JSONL file of image questions (images prepared in worker processes).",
        question_file="tables/question.jsonl", conv_mode="llava_v1", max_new_tokens=128,
        num_workers=UPSTREAM_LOADER_WORKERS,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    common.configure_logging()
    return eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
