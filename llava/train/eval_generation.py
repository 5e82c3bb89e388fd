"""``--eval_generation_samples K``: at each evaluation, answer the first K evaluation samples and write what the model
said next to what the data says, so that a run shows whether it learns the task and not only a lower loss.

Each sample is asked what training teaches it to answer first: its prompt is the sample's tokens up to the first
supervised token (template, system prompt and image token exactly as training renders them), the reference is that
first supervised reply. Answers are greedy, generated on every rank (ZeRO-3 needs all ranks in each forward) and
written by the main process to ``output_dir/eval_generations.jsonl``, one line per sample and evaluation:
``{"step", "id", "prompt", "reference", "answer"}``; with ``--report_to tensorboard`` also as a text summary.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.generation import generate_batch

logger = logging.getLogger(__name__)

GENERATIONS_FILE = "eval_generations.jsonl"


@dataclass
class GenerationSample:
    sample_id: str
    prompt_ids: torch.Tensor
    image: torch.Tensor | None
    image_size: tuple[int, int] | None
    prompt: str
    reference: str


def _decode_with_images(ids: list[int], tokenizer: Any) -> str:
    """Token ids to text, ``IMAGE_TOKEN_INDEX`` shown as ``<image>``."""
    pieces, current = [], []
    for token in ids:
        if token == IMAGE_TOKEN_INDEX:
            pieces.append(tokenizer.decode(current, skip_special_tokens=True))
            current = []
        else:
            current.append(token)
    pieces.append(tokenizer.decode(current, skip_special_tokens=True))
    return DEFAULT_IMAGE_TOKEN.join(pieces)


def generation_sample(dataset: Any, index: int, tokenizer: Any) -> GenerationSample:
    """The prompt (up to the first supervised token) and reference (the first supervised reply) of one sample."""
    item = dataset[index]
    record = dataset.list_data_dict[index]
    input_ids, labels = item["input_ids"], item["labels"]
    supervised = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    if not supervised:
        raise ValueError(f"evaluation sample {record.get('id', index)!r} has no supervised reply to compare against")
    reply = [supervised[0]]  # the first run of consecutive supervised positions
    for position in supervised[1:]:
        if position != reply[-1] + 1:
            break
        reply.append(position)
    prompt_ids = input_ids[: reply[0]]
    has_image = "image" in record
    return GenerationSample(
        sample_id=str(record.get("id", index)),
        prompt_ids=prompt_ids,
        image=item["image"] if has_image else None,
        image_size=item.get("image_size") if has_image else None,
        prompt=_decode_with_images(prompt_ids.tolist(), tokenizer),
        reference=tokenizer.decode(input_ids[reply].tolist(), skip_special_tokens=True).strip(),
    )


class EvalGenerationCallback(TrainerCallback):
    """Answers the first ``count`` evaluation samples after each evaluation (see the module docstring)."""

    def __init__(
        self, eval_dataset: Any, tokenizer: Any, count: int, max_new_tokens: int, batch_size: int, reporters=()
    ):
        self.tokenizer = tokenizer
        self.reporters = reporters  # the trainer's callbacks, among them the reporting integrations
        self.samples = [
            generation_sample(eval_dataset, index, tokenizer) for index in range(min(count, len(eval_dataset)))
        ]
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        answers = self._answer(model)
        if not state.is_world_process_zero:
            return
        lines = [
            {"step": state.global_step, "id": sample.sample_id, "prompt": sample.prompt,
             "reference": sample.reference, "answer": answer}
            for sample, answer in zip(self.samples, answers)
        ]  # fmt: skip
        path = Path(args.output_dir) / GENERATIONS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as file:
            file.writelines(json.dumps(line) + "\n" for line in lines)
        logger.info("step %d: %d evaluation answers written to %s", state.global_step, len(lines), path)
        self._report(args, state, lines)

    def _answer(self, model) -> list[str]:
        options = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": 1, "use_cache": True}
        was_training = model.training
        model.eval()
        try:
            rows = []
            for start in range(0, len(self.samples), self.batch_size):
                batch = self.samples[start : start + self.batch_size]
                rows += generate_batch(
                    model, self.tokenizer, [sample.prompt_ids for sample in batch], [sample.image for sample in batch],
                    [sample.image_size for sample in batch], options,
                )  # fmt: skip
        finally:
            model.train(was_training)
        return [text.strip() for text in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def _report(self, args, state, lines: list[dict]) -> None:
        """A markdown table per evaluation for TensorBoard, when it is one of the reporters."""
        from transformers.integrations import TensorBoardCallback

        writers = [
            callback.tb_writer
            for callback in self.reporters
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None
        ]
        if not writers:
            return
        rows = ["| id | reference | answer |", "|---|---|---|"]
        rows += [f"| {line['id']} | {line['reference']} | {line['answer']} |" for line in lines]
        for writer in writers:
            writer.add_text("eval_generations", "\n".join(rows), state.global_step)
            writer.flush()


def add_eval_generation(trainer: Any, tokenizer: Any, training_args: Any) -> None:
    """Attach the callback when ``--eval_generation_samples`` asks for it."""
    count = getattr(training_args, "eval_generation_samples", 0)
    if not count or trainer.eval_dataset is None:
        return
    trainer.add_callback(
        EvalGenerationCallback(
            trainer.eval_dataset, tokenizer, count, training_args.eval_generation_max_new_tokens,
            training_args.per_device_eval_batch_size, reporters=trainer.callback_handler.callbacks,
        )
    )  # fmt: skip
