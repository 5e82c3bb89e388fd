"""Upstream's own data pipeline, timed: ``llava.train.train.LazySupervisedDataset`` + its collator, set up as its
``train()`` sets them up (slow tokenizer, right padding, pad = unk, ``default_conversation`` from ``--version``).

Request: {"data_path", "image_folder", "tokenizer" (a directory AutoTokenizer loads), "processor" (a directory
CLIPImageProcessor loads), "version", "model_max_length", "batch", "repeat", "first_batch_out" (a torch file)}.
One torch thread. Batch 0 runs once as a warm-up; then every batch, in order, ``repeat`` times.
Answer: {"versions", "times": [seconds of each full pass], "samples", "batches"}; the first batch's input_ids,
labels and images go to ``first_batch_out``.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from _common import main, upstream_llava, versions


def handle(request: dict) -> dict:
    upstream_llava()
    import torch
    import transformers

    from llava import conversation as conversation_lib
    from llava.train import train as upstream_train

    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        request["tokenizer"], model_max_length=request["model_max_length"], padding_side="right", use_fast=False
    )
    tokenizer.pad_token = tokenizer.unk_token  # what train() does for every version but v0
    version = request["version"]
    conversation_lib.default_conversation = conversation_lib.conv_templates.get(
        version, conversation_lib.conv_templates["vicuna_v1"]
    )
    data_args = SimpleNamespace(
        image_folder=request["image_folder"], image_aspect_ratio="pad", is_multimodal=True, mm_use_im_start_end=False,
        image_processor=transformers.CLIPImageProcessor.from_pretrained(request["processor"]),
    )  # fmt: skip
    dataset = upstream_train.LazySupervisedDataset(request["data_path"], tokenizer, data_args)
    collator = upstream_train.DataCollatorForSupervisedDataset(tokenizer=tokenizer)
    size = request["batch"]
    starts = range(0, len(dataset), size)

    def batch(start: int) -> dict:
        return collator([dataset[i] for i in range(start, min(start + size, len(dataset)))])

    first = batch(0)  # warm-up
    torch.save({key: first[key] for key in ("input_ids", "labels", "images")}, request["first_batch_out"])
    times = []
    for _ in range(request["repeat"]):
        start_time = time.perf_counter()
        for start in starts:
            batch(start)
        times.append(time.perf_counter() - start_time)
    return dict(versions=versions(), times=times, samples=len(dataset), batches=len(starts))


if __name__ == "__main__":
    main(handle)
