"""What upstream's generation entry points (``model_vqa``, ``model_vqa_loader``, ``model_vqa_science``,
``model_vqa_mmbench``) share, written once: their flags, loading the model, reading question files, splitting them
into chunks, building prompts, batched generation and the answers file.

Each entry point only turns its question format into :class:`Request` objects and calls :func:`run`.

The answers file they write is described in :mod:`llava.eval.answers`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.eval.answers import AnswersFile, short_uuid
from llava.inference import default_device, image_token_text, load_image
from llava.inference import generation_options as sampling_options
from llava.mm_utils import get_model_name_from_path, load_image_from_base64, process_images, tokenizer_image_token

logger = logging.getLogger(__name__)

# Upstream switches a "plain" (projector-pretraining) model to the *_mmtag template in these two entry points.
PLAIN_MODEL_MARKER = "plain"

Item = TypeVar("Item")


# ----------------------------------------------------------------------------------------------------------------
# Chunks: upstream's split, so that its parallel-chunk scripts (gqa.sh, vqav2.sh, seed.sh) cover every question once


def split_list(items: Sequence[Item], num_chunks: int) -> list[Sequence[Item]]:
    """Consecutive chunks of ``ceil(len / num_chunks)`` items, as upstream splits (the last one shorter; fewer
    than ``num_chunks`` chunks when there are few items)."""
    if num_chunks < 1:
        raise ValueError(f"--num-chunks must be at least 1, got {num_chunks}")
    chunk_size = math.ceil(len(items) / num_chunks)
    if chunk_size == 0:
        return []
    return [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]


def get_chunk(items: Sequence[Item], num_chunks: int, chunk_idx: int) -> Sequence[Item]:
    """Chunk ``chunk_idx`` of :func:`split_list`. A valid index past the last chunk (5 questions in 4 chunks
    make 3 chunks of 2, 2, 1) is an empty chunk here; upstream's index raised IndexError and that job failed."""
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx must be in 0..{num_chunks - 1} for --num-chunks {num_chunks}, got {chunk_idx}")
    chunks = split_list(items, num_chunks)
    return chunks[chunk_idx] if chunk_idx < len(chunks) else items[:0]


# ----------------------------------------------------------------------------------------------------------------
# Questions in, answers out


@dataclass
class Request:
    """One generation: what the model is asked and what its answers line records.

    ``query`` is the user turn as the model sees it (image token included); ``prompt`` is what the answers file
    records. ``before_prompt`` / ``after_text`` are extra answer keys in upstream's positions (MMBench's
    ``round_id`` before ``prompt``; ``options`` and ``option_char`` after ``text``).
    """

    question_id: Any
    prompt: str
    query: str
    image_path: str | None = None
    image_base64: str | None = None
    before_prompt: dict[str, Any] = field(default_factory=dict)
    after_text: dict[str, Any] = field(default_factory=dict)

    def load_image(self):
        """The question's image as RGB, or None for a text-only question."""
        if self.image_base64 is not None:
            return load_image_from_base64(self.image_base64).convert("RGB")
        if self.image_path is not None:
            return load_image(self.image_path)
        return None

    def answer_line(self, text: str, model_id: str) -> dict[str, Any]:
        return {
            "question_id": self.question_id,
            **self.before_prompt,
            "prompt": self.prompt,
            "text": text,
            **self.after_text,
            "answer_id": short_uuid(),
            "model_id": model_id,
            "metadata": {},
        }


def require(record: dict[str, Any], keys: Iterable[str], where: str) -> None:
    """Raise naming the question and the missing keys (upstream died with a bare KeyError)."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{where} has no {', '.join(repr(key) for key in missing)}; every question needs them")


def image_query(text: str, mm_use_im_start_end: bool) -> str:
    """The image token (or ``<im_start><image><im_end>``) on its own line before the question, as upstream."""
    return image_token_text(mm_use_im_start_end) + "\n" + text


def build_prompt(query: str, conv_mode: str) -> str:
    """One user turn in the template, ending where the assistant answers."""
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


# ----------------------------------------------------------------------------------------------------------------
# Flags and the model


def build_parser(
    description: str, *, question_file: str, conv_mode: str, max_new_tokens: int, num_workers: int = 0
) -> argparse.ArgumentParser:
    """Upstream's flags with each entry point's defaults, plus ``--batch-size``, ``--device`` and 4/8-bit loading."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None, help="the base model of a LoRA run")
    parser.add_argument("--image-folder", type=str, default="")
    parser.add_argument("--question-file", type=str, default=question_file)
    parser.add_argument("--answers-file", type=str, default="answer.jsonl")
    parser.add_argument("--conv-mode", type=str, default=conv_mode)
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="answer only this chunk (0-based)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 for greedy decoding")
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument(
        "--batch-size", type=int, default=1,
        help="questions generated together, left-padded (greedy answers are the same as one at a time)",
    )  # fmt: skip
    parser.add_argument("--num-workers", type=int, default=num_workers, help="processes preparing questions")
    parser.add_argument("--device", type=str, default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every bad flag value at once, before the model loads."""
    problems = []
    if args.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_chunks < 1:
        problems.append(f"--num-chunks must be at least 1, got {args.num_chunks}")
    elif not 0 <= args.chunk_idx < args.num_chunks:
        problems.append(f"--chunk-idx must be in 0..{args.num_chunks - 1}, got {args.chunk_idx}")
    if args.num_beams < 1:
        problems.append(f"--num_beams must be at least 1, got {args.num_beams}")
    if args.num_workers < 0:
        problems.append(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.load_8bit and args.load_4bit:
        problems.append("pass at most one of --load-8bit / --load-4bit")
    if not Path(os.path.expanduser(args.question_file)).is_file():
        problems.append(f"--question-file {args.question_file} does not exist")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


@dataclass
class LoadedModel:
    tokenizer: Any
    model: torch.nn.Module
    image_processor: Any
    name: str


def load_model(args: argparse.Namespace) -> LoadedModel:
    """``load_pretrained_model`` on ``--model-path`` (and ``--model-base`` for LoRA runs and projectors)."""
    from llava.model.builder import load_pretrained_model

    # Hub ids (liuhaotian/llava-v1.5-13b) are resolved by the loader.
    model_path = os.path.expanduser(args.model_path)
    model_base = os.path.expanduser(args.model_base) if args.model_base else None
    name = get_model_name_from_path(model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path, model_base, name, load_8bit=args.load_8bit, load_4bit=args.load_4bit,
        device=args.device or default_device(),
    )  # fmt: skip
    return LoadedModel(tokenizer, model, image_processor, name)


def plain_model_conv_mode(conv_mode: str, model_name: str) -> str:
    """Upstream's switch for a projector-pretraining ("plain") model evaluated with a non-mmtag template."""
    if PLAIN_MODEL_MARKER in model_name and "finetune" not in model_name.lower() and "mmtag" not in conv_mode:
        switched = conv_mode + "_mmtag"
        logger.warning("%s looks like a plain (pretraining) model: using the %s template", model_name, switched)
        return switched
    return conv_mode


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    return sampling_options(args.temperature, args.max_new_tokens, args.top_p, args.num_beams)


# ----------------------------------------------------------------------------------------------------------------
# Generation


class RequestDataset(torch.utils.data.Dataset):
    """Tokenised prompt and preprocessed image of each request (in DataLoader workers for model_vqa_loader)."""

    def __init__(self, requests: Sequence[Request], tokenizer: Any, image_processor: Any, config: Any, conv_mode: str):
        self.requests = requests
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.conv_mode = conv_mode

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor | None, tuple[int, int] | None]:
        request = self.requests[index]
        prompt = build_prompt(request.query, self.conv_mode)
        input_ids = tokenizer_image_token(prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        image = request.load_image()
        if image is None:
            return index, input_ids, None, None
        if self.image_processor is None:
            raise ValueError(
                f"question {request.question_id!r} has an image, but the model is a language model without a "
                "vision tower; evaluate a LLaVA model (or pass --model-base for a LoRA run)"
            )
        return index, input_ids, process_images([image], self.image_processor, self.config)[0], image.size


def _as_list(batch: list) -> list:
    return batch


def answer(requests: Sequence[Request], loaded: LoadedModel, args: argparse.Namespace, conv_mode: str) -> int:
    """Generate an answer for every request, ``--batch-size`` at a time, into ``--answers-file``; returns the
    number of lines written."""
    from tqdm import tqdm

    from llava.model.generation import generate_batch

    model, tokenizer = loaded.model, loaded.tokenizer
    dataset = RequestDataset(requests, tokenizer, loaded.image_processor, model.config, conv_mode)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers, collate_fn=_as_list
    )
    options = generation_options(args)
    written = 0
    with AnswersFile(args.answers_file) as answers:
        for batch in tqdm(loader, total=len(loader), unit="batch"):
            indices, prompts, images, sizes = zip(*batch)
            rows = generate_batch(model, tokenizer, list(prompts), list(images), list(sizes), options)
            for index, text in zip(indices, tokenizer.batch_decode(rows, skip_special_tokens=True)):
                answers.write(requests[index].answer_line(text.strip(), loaded.name))
                written += 1
    logger.info("%d answers written to %s", written, args.answers_file)
    return written


def run(
    args: argparse.Namespace,
    questions: Sequence[Any],
    to_requests,
    *,
    switch_plain_models: bool = False,
) -> int:
    """The common body of every entry point: check flags, take this chunk of ``questions``, load the model, turn
    each question into requests (``to_requests(question, model_config)`` yields them), answer them."""
    chunk = get_chunk(questions, args.num_chunks, args.chunk_idx)
    logger.info("chunk %d of %d: %d of %d questions", args.chunk_idx, args.num_chunks, len(chunk), len(questions))
    loaded = load_model(args)
    conv_mode = args.conv_mode
    if switch_plain_models:
        conv_mode = plain_model_conv_mode(conv_mode, loaded.name)
    requests = [request for question in chunk for request in to_requests(question, loaded.model.config)]
    return answer(requests, loaded, args, conv_mode)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
