"""Data pipeline: `LazySupervisedDataset` + collator against the floor of tokenising each conversation once with
the fast tokenizer plus decoding and transforming each image once (`llava.mm_utils.process_images`, `pad`: the
transform the dataset uses, so the ratio is what the dataset adds around it).

LLaVA-1.5-shaped data: the v1 template, 1-5 rounds, COCO-sized JPEGs padded (`image_aspect_ratio pad`) to a 336 px
CLIP input. The tokenizer is the tiny offline Llama-2-style one (same algorithm as Llama-2's, smaller vocabulary).
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from types import SimpleNamespace

from common import Row, seconds

SAMPLES = {"tiny": 16, "quick": 256, "full": 2048}
DISTINCT_IMAGES = {"tiny": 4, "quick": 32, "full": 128}
BATCH = 16
WORDS = "the a man woman dog cat red blue bus street sign table sitting standing near behind holding".split()


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def make_data(root: Path, size: str, seed: int = 0) -> tuple[Path, Path]:
    from PIL import Image

    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True)
    for index in range(DISTINCT_IMAGES[size]):
        width, height = rng.choice([(640, 480), (480, 640), (640, 427), (500, 375)])
        color = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (width, height), color).save(images / f"{index:06d}.jpg", quality=90)
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
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessorPil

    from llava.conversation import get_conv_template
    from llava.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset
    from llava.mm_utils import process_images

    tokenizer = AutoTokenizer.from_pretrained(tiny.llm, model_max_length=2048)
    tokenizer.pad_token = tokenizer.unk_token
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )  # fmt: skip
    conv = get_conv_template("v1")
    with tempfile.TemporaryDirectory() as tmp:
        data, images = make_data(Path(tmp), size)
        args = SimpleNamespace(image_aspect_ratio="pad", image_grid_pinpoints=None, is_multimodal=True,
                               image_folder=str(images))  # fmt: skip
        dataset = LazySupervisedDataset(str(data), tokenizer, args, image_processor=processor, conv=conv)
        collator = DataCollatorForSupervisedDataset(tokenizer)
        records = dataset.list_data_dict

        def pipeline():
            for start in range(0, len(dataset), BATCH):
                collator([dataset[i] for i in range(start, min(start + BATCH, len(dataset)))])

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

        repeat = 1 if size == "tiny" else 3
        ours, base = seconds(pipeline, repeat=repeat), seconds(floor, repeat=repeat)
        tokens = sum(len(tokenizer(p).input_ids) for p in prompts)
    samples = len(records)
    return [
        Row("data: dataset+collator time per sample", ours / samples * 1e3, base / samples * 1e3, "ms", "<= 1.5x",
            note=f"{samples / ours:.0f} samples/s, {tokens / ours:.0f} tokens/s"),
    ]  # fmt: skip
