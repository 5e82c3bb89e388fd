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

import torch

from llava.eval import common
from llava.eval.common import get_chunk, split_list  # noqa: F401  (upstream defines them here)
from llava.eval.model_vqa import image_requests, read_questions

UPSTREAM_LOADER_WORKERS = 4
UPSTREAM_CONV_MODE = "llava_v1"


class CustomDataset(torch.utils.data.Dataset):
    """Upstream's dataset of image questions: ``(input_ids, image_tensor, image.size)`` per question line, the prompt
    in ``conv_mode`` (upstream read it from the command line's global ``args``, so the class failed when imported)."""

    def __init__(
        self, questions, image_folder, tokenizer, image_processor, model_config, conv_mode: str = UPSTREAM_CONV_MODE
    ):
        to_requests = image_requests(image_folder)
        requests = [request for question in questions for request in to_requests(question, model_config)]
        self._requests = common.RequestDataset(requests, tokenizer, image_processor, model_config, conv_mode)

    def __len__(self) -> int:
        return len(self._requests)

    def __getitem__(self, index: int):
        _, input_ids, image, size = self._requests[index]
        return input_ids, image, size


def collate_fn(batch):
    """Upstream's: stacked ids and images (so one question per batch), the sizes as a tuple."""
    input_ids, images, sizes = zip(*batch)
    return torch.stack(input_ids), torch.stack(images), sizes


def create_data_loader(
    questions, image_folder, tokenizer, image_processor, model_config, batch_size=1,
    num_workers=UPSTREAM_LOADER_WORKERS, conv_mode: str = UPSTREAM_CONV_MODE,
):  # fmt: skip
    """Upstream's loader over :class:`CustomDataset`: one question per batch (the command line's ``--batch-size``
    batches left-padded prompts instead)."""
    if batch_size != 1:
        raise ValueError(
            f"create_data_loader stacks unpadded prompts, so batch_size must be 1 (got {batch_size}), as upstream; "
            "for batches use python -m llava.eval.model_vqa_loader --batch-size N"
        )
    dataset = CustomDataset(questions, image_folder, tokenizer, image_processor, model_config, conv_mode)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False, collate_fn=collate_fn
    )


def eval_model(args: argparse.Namespace) -> int:
    common.check_args(args)
    questions = read_questions(args.question_file)
    return common.run(args, questions, image_requests(args.image_folder), switch_plain_models=True)


def build_parser() -> argparse.ArgumentParser:
    return common.build_parser(
        "Answer a JSONL file of image questions (images prepared in worker processes).",
        question_file="tables/question.jsonl", conv_mode=UPSTREAM_CONV_MODE, max_new_tokens=128,
        num_workers=UPSTREAM_LOADER_WORKERS,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    common.configure_logging()
    return eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
