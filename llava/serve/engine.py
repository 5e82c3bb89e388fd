"""Batched, streamed generation for the model worker.

Requests in flight at the same time are generated together, as the eval entry points' ``--batch-size`` batches
questions: left-padded prompts, one batch of images, one ``generate``. Each row's tokens go to its own client as
they come (:class:`RowStreamer`), and a row that is finished (end token, its own ``max_new_tokens``, its stop string,
or a client that left) stops counting for the batch. Rows may belong to different LoRA runs of one base
(:mod:`llava.model.lora_runs`): each row names its adapter and each image its projector. Only requests with the same
sampling settings share a batch (``generate`` takes one temperature); greedy answers are those of each prompt alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from llava.model.generation import end_token_ids, left_pad, pad_token_id
from llava.model.lora_runs import routed_projectors

logger = logging.getLogger(__name__)

# How long the first request of a batch waits for others that arrive with it.
GATHER_WINDOW_S = 0.02
# A client waits at most this long for its next piece of text before the worker reports an error.
NEXT_TEXT_TIMEOUT_S = 600
# Decoded text ending in this is an unfinished multi-byte character: wait for the next token before sending it.
REPLACEMENT_CHAR = "\ufffd"
_END = object()


@dataclass(eq=False)
class Job:
    """One request: its tokenised prompt, preprocessed images and limits; ``output`` receives its texts."""

    input_ids: torch.Tensor  # 1-D, with IMAGE_TOKEN_INDEX placeholders
    images: list[torch.Tensor]  # one preprocessed tensor per image (3-D; 4-D for anyres tiles)
    image_sizes: list[tuple[int, int]]
    adapter: str | None
    do_sample: bool
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: str | None
    output: queue.Queue = field(default_factory=queue.Queue)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def batch_key(self) -> tuple:
        return (self.do_sample, self.temperature, self.top_p) if self.do_sample else (False,)


class RowStreamer(BaseStreamer):
    """Receives each step's new tokens (one per row) and sends every row's answer so far to its own job."""

    def __init__(self, jobs: list[Job], tokenizer: Any, ends: set[int], tokenizer_lock: threading.Lock) -> None:
        self.jobs = jobs
        self.tokenizer = tokenizer
        self.tokenizer_lock = tokenizer_lock
        self.ends = ends
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands the prompt (empty when generating from embeddings)
            self.prompt_seen = True
            return
        for job, token in zip(self.jobs, value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            if job.done:
                continue
            if job.cancelled.is_set():
                self._finish(job)
                continue
            if token in self.ends:
                self._finish(job)
                continue
            job.tokens.append(token)
            with self.tokenizer_lock:
                text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
            if job.stop and job.stop in text:
                job.text = text[: text.index(job.stop)]
                self._finish(job)
                continue
            if len(job.tokens) >= job.max_new_tokens:
                job.text = text
                self._finish(job)
                continue
            if text != job.text and not text.endswith(REPLACEMENT_CHAR):
                job.text = text
                job.output.put(text)

    def end(self) -> None:
        for job in self.jobs:
            if not job.done:
                self._finish(job)

    @staticmethod
    def _finish(job: Job) -> None:
        job.done = True
        job.output.put(job.text)
        job.output.put(_END)


class RowsDone(StoppingCriteria):
    """Stops each row once its job is done, so that ``generate`` ends when every row is."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.tensor([job.done for job in self.jobs], dtype=torch.bool, device=input_ids.device)


class BatchingEngine:
    """One generation thread over ``model``; :meth:`stream` hands it a job and yields the job's texts."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int, gather_window_s: float = GATHER_WINDOW_S):
        if max_batch_size < 1:
            raise ValueError(f"the batch size must be at least 1, not {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.gather_window_s = gather_window_s
        # A fast tokenizer used from two threads at once can fail ("Already borrowed"): the request threads that
        # tokenise prompts and the generation thread that decodes answers take turns.
        self.tokenizer_lock = threading.Lock()
        self.pad_id = pad_token_id(tokenizer)
        self.ends = end_token_ids(model, tokenizer)
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.batches = 0
        self.thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self.thread.start()

    def stream(self, job: Job) -> Iterator[str]:
        """Queue ``job`` and yield its answer so far after each new piece of text; raises what generation raised."""
        self.waiting.put(job)
        try:
            while True:
                item = job.output.get(timeout=NEXT_TEXT_TIMEOUT_S)
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        except queue.Empty:
            raise TimeoutError(f"no text from the generation thread in {NEXT_TEXT_TIMEOUT_S} s") from None
        finally:
            job.cancelled.set()  # a client that left stops its row

    # ------------------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        pending: list[Job] = []
        while True:
            if not pending:
                pending.append(self.waiting.get())
                deadline = time.monotonic() + self.gather_window_s
                while len(pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    try:
                        pending.append(self.waiting.get(timeout=left))
                    except queue.Empty:
                        break
            while True:  # everything queued meanwhile joins the next batch
                try:
                    pending.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            pending = [job for job in pending if not job.cancelled.is_set()]
            if not pending:
                continue
            key = pending[0].batch_key
            batch = [job for job in pending if job.batch_key == key][: self.max_batch_size]
            pending = [job for job in pending if all(job is not taken for taken in batch)]
            self._run(batch)

    def _run(self, jobs: list[Job]) -> None:
        try:
            self._generate(jobs)
        except Exception as err:  # the thread must live on: the error goes to the batch's clients
            logger.exception("generation failed for a batch of %d", len(jobs))
            for job in jobs:
                if not job.done:
                    job.done = True
                    job.output.put(err)
        self.batches += 1

    def _generate(self, jobs: list[Job]) -> None:
        model = self.model
        input_ids, attention_mask = left_pad([job.input_ids for job in jobs], self.pad_id)
        images, image_sizes, route = self._images(jobs)
        options: dict[str, Any] = {"max_new_tokens": max(job.max_new_tokens for job in jobs), "use_cache": True}
        if jobs[0].do_sample:
            options.update(do_sample=True, temperature=jobs[0].temperature, top_p=jobs[0].top_p)
        else:
            options["do_sample"] = False
        if any(job.adapter is not None for job in jobs):
            options["adapter_names"] = [job.adapter for job in jobs]
        streamer = RowStreamer(jobs, self.tokenizer, self.ends, self.tokenizer_lock)
        with torch.inference_mode(), routed_projectors(model, route):
            model.generate(
                input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                images=images,
                image_sizes=image_sizes,
                pad_token_id=self.pad_id,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([RowsDone(jobs)]),
                **options,
            )
        streamer.end()

    def _images(self, jobs: list[Job]):
        """The batch's images in the order the splice takes them (a row without images takes one zero frame), and
        the adapter of each encoded frame."""
        if not any(job.images for job in jobs):
            return None, None, []
        first = next(image for job in jobs for image in job.images)
        frames, sizes, route = [], [], []
        for job in jobs:
            row_images = job.images or [first.new_zeros(first.shape[-3:])]
            row_sizes = job.image_sizes or [(first.shape[-1], first.shape[-2])]
            for image, size in zip(row_images, row_sizes):
                frames.append(image)
                sizes.append(size)
                route += [job.adapter] * (image.shape[0] if image.ndim == 4 else 1)
        device, dtype = self.model.device, self.model.dtype
        frames = [frame.to(device, dtype=dtype) for frame in frames]
        if all(frame.ndim == 3 and frame.shape == frames[0].shape for frame in frames):
            return torch.stack(frames), sizes, route
        return frames, sizes, route
