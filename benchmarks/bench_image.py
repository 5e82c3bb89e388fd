"""Image transform: `llava.mm_utils.process_images` (`pad`, 336 px, CLIP ViT-L/14-336's processor settings) against
the processor doing the same work itself, as upstream's `process_images` has it (`expand2square`, then
`CLIPImageProcessor.preprocess`; in transformers 5 without torchvision that is the PIL-backed class).

Per image, on COCO-sized JPEGs (640x480, 480x640, 640x427, 500x375) already decoded: decoding is the same for both
and is not part of the transform. The images are photo-like (smooth structure, hard edges, noise), so that the
largest pixel difference reported beside the ratio is what photos get.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
from common import Row, paired_seconds

IMAGES = {"tiny": 4, "quick": 16, "full": 64}
SIZES = [(640, 480), (480, 640), (640, 427), (500, 375)]
CLIP_L_336 = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336},
              "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}  # fmt: skip


def photo_like_jpeg(width: int, height: int, rng: np.random.Generator) -> bytes:
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.3, 3)
    base = np.stack([128 + 100 * np.sin(xx / 17.0 + p) * np.cos(yy / 23.0 - p) for p in phase], -1)
    base[(xx // 60 + yy // 45) % 3 == 0] *= 0.4
    base += rng.normal(0, 12, base.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run(size: str) -> list[Row]:
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from llava.mm_utils import expand2square, process_images, processor_mean_color

    processor = CLIPImageProcessorPil(**CLIP_L_336)
    rng = np.random.default_rng(0)
    images = []
    for index in range(IMAGES[size]):
        with Image.open(io.BytesIO(photo_like_jpeg(*SIZES[index % len(SIZES)], rng))) as image:
            images.append(image.convert("RGB"))
    cfg = SimpleNamespace(image_aspect_ratio="pad")
    color = processor_mean_color(processor)

    def ours():
        return [process_images([image], processor, cfg) for image in images]

    def theirs():
        return [
            processor.preprocess([expand2square(image, color)], return_tensors="pt")["pixel_values"] for image in images
        ]

    repeat = 2 if size == "tiny" else 5
    # One thread, as in a DataLoader worker (PyTorch sets 1 there; PIL's resize is single-threaded anyway).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours_s, theirs_s = paired_seconds(ours, theirs, repeat=repeat)
    finally:
        torch.set_num_threads(threads)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    levels = max(((a - b).abs() * std * 255).max().item() for a, b in zip(ours(), theirs()))
    count = len(images)
    return [
        Row("image transform per image (pad, 336 px, COCO-sized JPEGs): processor vs ours", theirs_s / count * 1e3,
            ours_s / count * 1e3, "ms", ">= 3x", note=f"largest difference {levels:.2f}/255"),
    ]  # fmt: skip
