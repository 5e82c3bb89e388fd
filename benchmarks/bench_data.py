"""Data pipeline: `LazySupervisedDataset` + collator, against two baselines measured in the same run on the same
generated data:

- the floor: tokenising each conversation once with the fast tokenizer plus decoding and transforming each image
  once (`llava.mm_utils.process_images`, `pad`: the transform the dataset uses), so that the ratio is what the
  dataset adds around it;
- upstream's own `LazySupervisedDataset` + `DataCollatorForSupervisedDataset` (llava-torch 1.2.2, transformers 4.37,
  its slow tokenizer and `CLIPImageProcessor`), run in the reference environment (`make upstream-env`) by
  `tests/upstream_side/data_pipeline.py`. Both sides: the same samples in the same order, batches of 16, one torch
  thread, batch 0 once as a warm-up, then the best of `repeat` full passes. The first batch's input_ids and labels of
  both sides are compared and any difference is named in the row's note.

LLaVA-1.5-shaped data: the v1 template, 1-5 rounds, photo-like COCO-sized JPEGs padded (`image_aspect_ratio pad`) to
a 336 px CLIP input (ViT-L/14-336's processor settings). The tokenizer is the tiny offline Llama-2-style one (same
algorithm as Llama-2's, smaller vocabulary), saved so that transformers 4.37 loads it too.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from bench_image import CLIP_L_336, SIZES, photo_like_jpeg
from common import Row, seconds, skipped

SAMPLES = {"tiny": 32, "quick": 256, "full": 2048}
DISTINCT_IMAGES = {"tiny": 4, "quick": 32, "full": 128}
BATCH = 16
REPEAT = {"tiny": 1, "quick": 3, "full": 3}
MODEL_MAX_LENGTH = 2048
WORDS = "the a man woman dog cat red blue bus street sign table sitting standing near behind holding".split()
UPSTREAM_NAME = "data: dataset+collator samples/s, ours vs upstream's own (llava-torch)"
# openai/clip-vit-large-patch14-336's preprocessor_config.json, as transformers 4.37 reads it.
UPSTREAM_PROCESSOR_CONFIG = {
    "image_processor_type": "CLIPImageProcessor", "do_resize": True, "resample": 3, "do_center_crop": True,
    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
    **CLIP_L_336,
}  # fmt: skip


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def make_data(root: Path, size: str, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    for index in range(DISTINCT_IMAGES[size]):
        (images / f"{index:06d}.jpg").write_bytes(photo_like_jpeg(*SIZES[index % len(SIZES)], pixels))
    records = []
    for index in range(SAMPLES[size]):
        turns = []
        for round_index in range(rng.randint(1, 5)):
            question = _sentence(rng, 5, 15)
            turns.append({"from": "human", "value": ("<image>\n" if round_index == 0 else "") + question})
            turns.append({"from": "gpt", "value": _sentence(rng, 10, 60)})
        records.append({"id": str(index), "image": f"{index % DISTINCT_IMAGES[size]:06d}.jpg", "conversations": turns})
    data = root / "data.json"
    data.write_text(json.dumps(records))
    return data, images


def run(size: str, tiny) -> list[Row]:
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessorPil

    from llava.conversation import get_conv_template
    from llava.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset
    from llava.mm_utils import process_images

    tokenizer = AutoTokenizer.from_pretrained(tiny.llm, model_max_length=MODEL_MAX_LENGTH)
    tokenizer.pad_token = tokenizer.unk_token
    processor = CLIPImageProcessorPil(**CLIP_L_336)
    conv = get_conv_template("v1")
    repeat = REPEAT[size]
    with tempfile.TemporaryDirectory() as tmp:
        data, images = make_data(Path(tmp), size)
        args = SimpleNamespace(image_aspect_ratio="pad", image_grid_pinpoints=None, is_multimodal=True,
                               image_folder=str(images))  # fmt: skip
        dataset = LazySupervisedDataset(str(data), tokenizer, args, image_processor=processor, conv=conv)
        collator = DataCollatorForSupervisedDataset(tokenizer)
        records = dataset.list_data_dict
        starts = range(0, len(dataset), BATCH)

        def batch(start: int) -> dict:
            return collator([dataset[i] for i in range(start, min(start + BATCH, len(dataset)))])

        def pipeline():
            for start in starts:
                batch(start)

        prompts = []
        for record in records:
            c = conv.copy()
            for turn in record["conversations"]:
                c.append_message(c.roles[0] if turn["from"] == "human" else c.roles[1], turn["value"])
            prompts.append(c.get_prompt())

        def floor():
            for record, prompt in zip(records, prompts):
                with Image.open(images / record["image"]) as image:
                    process_images([image.convert("RGB")], processor, args)
                tokenizer(prompt)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker, and as upstream's side runs
        try:
            first = batch(0)  # the warm-up (as on upstream's side), and the batch compared with upstream's
            passes = [_timed(pipeline) for _ in range(repeat)]
            base = seconds(floor, repeat=repeat)
        finally:
            torch.set_num_threads(threads)
        tokens = sum(len(tokenizer(p).input_ids) for p in prompts)
        upstream_row = _against_upstream(size, tiny, data, images, Path(tmp), first, len(records) / min(passes))
    samples, ours = len(records), statistics.median(passes)
    return [
        Row("data: dataset+collator time per sample", ours / samples * 1e3, base / samples * 1e3, "ms", "<= 1.5x",
            note=f"{samples / ours:.0f} samples/s, {tokens / ours:.0f} tokens/s"),
        upstream_row,
    ]  # fmt: skip


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _against_upstream(size: str, tiny, data: Path, images: Path, tmp: Path, first: dict, ours_rate: float) -> Row:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        from upstream_env import UpstreamEnv, is_built, venv_dir
    finally:
        sys.path.pop(0)
    if not is_built(venv_dir()):
        return skipped(UPSTREAM_NAME, "reference venv missing (make upstream-env)")
    tokenizer_dir, processor_dir = tmp / "upstream-tokenizer", tmp / "upstream-processor"
    tokenizer_dir.mkdir()
    processor_dir.mkdir()
    # The sentencepiece model and its configs only: upstream's train() loads the slow tokenizer (use_fast=False).
    for name in ("tokenizer.model", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copyfile(Path(tiny.llm) / name, tokenizer_dir / name)
    (processor_dir / "preprocessor_config.json").write_text(json.dumps(UPSTREAM_PROCESSOR_CONFIG))
    first_out = tmp / "upstream-first-batch.pt"
    request = dict(data_path=str(data), image_folder=str(images), tokenizer=str(tokenizer_dir),
                   processor=str(processor_dir), version="v1", model_max_length=MODEL_MAX_LENGTH, batch=BATCH,
                   repeat=REPEAT[size], first_batch_out=str(first_out))  # fmt: skip
    answer = UpstreamEnv(venv_dir()).run("data_pipeline", request, timeout=1200)
    upstream_rate = answer["samples"] / min(answer["times"])
    note = f"{answer['batches']} batches of {BATCH}, best of {len(answer['times'])}; " + _compare_first(
        first, first_out
    )
    return Row(UPSTREAM_NAME, ours_rate, upstream_rate, "samples/s", ">= 3x", note=note)


def _compare_first(ours: dict, upstream_path: Path) -> str:
    """What differs between the two first batches: ids and labels must be equal; pixels within a few levels."""
    import torch

    theirs = torch.load(upstream_path, weights_only=True)
    problems = []
    for key in ("input_ids", "labels"):
        if ours[key].shape != theirs[key].shape:
            problems.append(f"{key} shape {tuple(ours[key].shape)} vs {tuple(theirs[key].shape)}")
        elif not torch.equal(ours[key], theirs[key]):
            rows = sorted({int(r) for r in (ours[key] != theirs[key]).nonzero()[:, 0]})
            problems.append(f"{key} MISMATCH in samples {rows}")
    std = torch.tensor(CLIP_L_336["image_std"]).view(1, 3, 1, 1)
    levels = ((ours["images"] - theirs["images"]).abs() * std * 255).max().item()
    same = "input_ids and labels identical" if not problems else "; ".join(problems)
    return f"first batch: {same}, pixels within {levels:.2f}/255"
