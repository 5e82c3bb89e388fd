"""Image and prompt helpers: upstream's semantics on known values."""

from __future__ import annotations

import types

import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    divide_to_patches,
    expand2square,
    get_anyres_image_grid_shape,
    get_model_name_from_path,
    process_anyres_image,
    process_images,
    resize_and_pad_image,
    select_best_resolution,
    tokenizer_image_token,
)
from llava.tokenization import encode

LLAVA_16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _reference_ids(prompt, tokenizer):
    """Upstream's algorithm written plainly: chunk by chunk (each alone, with the slow tokenizer's ids), BOS kept once.

    The slow tokenizer's ids themselves are pinned in test_preprocess.py (SLOW_IDS) and test_upstream_labels.py.
    """
    chunks = [encode(tokenizer, [chunk]).ids[0] for chunk in prompt.split("<image>")]
    bos = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [IMAGE_TOKEN_INDEX] + chunk[bos:]
    return ids


@pytest.mark.parametrize(
    "prompt",
    [
        "USER: no image here ASSISTANT:",
        "<image>\nWhat is this? ASSISTANT:",
        "USER: look <image> and tell ASSISTANT:",
        "USER: two <image> images <image>",
        "<image><image>",
        "",
    ],
)
def test_tokenizer_image_token_matches_per_chunk_reference(prompt, tiny_tokenizer):
    ids = tokenizer_image_token(prompt, tiny_tokenizer)
    assert ids == _reference_ids(prompt, tiny_tokenizer)
    assert ids.count(IMAGE_TOKEN_INDEX) == prompt.count("<image>")
    assert ids.count(tiny_tokenizer.bos_token_id) == 1
    tensor = tokenizer_image_token(prompt, tiny_tokenizer, return_tensors="pt")
    assert tensor.dtype == torch.long and tensor.tolist() == ids
    with pytest.raises(ValueError, match="Unsupported tensor type"):
        tokenizer_image_token(prompt, tiny_tokenizer, return_tensors="np")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_expand2square_centres_on_background(mode):
    image = Image.new("RGB", (30, 10), (200, 10, 10)).convert(mode)
    square = expand2square(image, (1, 2, 3))
    assert square.size == (30, 30) and square.mode == "RGB"
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((29, 29)) == (1, 2, 3)
    assert square.getpixel((15, 15)) == image.convert("RGB").getpixel((15, 5))
    assert expand2square(Image.new("RGB", (10, 30)), (1, 2, 3)).getpixel((0, 15)) == (1, 2, 3)
    same = Image.new(mode, (12, 12))
    assert expand2square(same, (1, 2, 3)) is same


def test_best_resolution_and_grid_shape():
    assert select_best_resolution((800, 600), LLAVA_16_PINPOINTS) == (672, 672)
    assert select_best_resolution((1000, 300), LLAVA_16_PINPOINTS) == (1008, 336)
    assert select_best_resolution((300, 1000), LLAVA_16_PINPOINTS) == (336, 1008)
    # Small images: every candidate keeps all pixels, the least wasteful wins (first on ties).
    assert select_best_resolution((100, 100), LLAVA_16_PINPOINTS) == (336, 672)
    assert get_anyres_image_grid_shape((800, 600), LLAVA_16_PINPOINTS, 336) == (2, 2)
    assert get_anyres_image_grid_shape((1000, 300), str(LLAVA_16_PINPOINTS), 336) == (3, 1)


def test_resize_and_pad_and_divide():
    image = Image.new("RGB", (100, 50), (255, 255, 255))
    padded = resize_and_pad_image(image, (64, 64))
    assert padded.size == (64, 64)
    assert padded.getpixel((32, 0)) == (0, 0, 0) and padded.getpixel((32, 32)) == (255, 255, 255)
    tiles = divide_to_patches(Image.new("RGB", (64, 32)), 32)
    assert [tile.size for tile in tiles] == [(32, 32), (32, 32)]


def test_process_images_square_pad_anyres(tiny_image_processor):
    wide, tall = Image.new("RGB", (64, 32), (255, 0, 0)), Image.new("RGB", (32, 96), (0, 255, 0))
    square = process_images([wide, tall], tiny_image_processor, types.SimpleNamespace(image_aspect_ratio="square"))
    assert square.shape == (2, 3, 32, 32)
    pad = process_images([wide], tiny_image_processor, types.SimpleNamespace(image_aspect_ratio="pad"))
    assert pad.shape == (1, 3, 32, 32)
    # Padding uses the processor's mean colour, which normalises to (almost) zero.
    assert pad[0, :, 0, 16].abs().max() < 0.02
    assert pad[0, 0, 16, 16] > 1.0  # red stays red in the middle
    cfg = types.SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints="[[32, 64], [64, 32], [64, 64]]")
    anyres = process_images([wide, tall], tiny_image_processor, cfg)
    assert isinstance(anyres, torch.Tensor) and anyres.shape == (2, 3, 3, 32, 32)
    direct = process_anyres_image(wide, tiny_image_processor, cfg.image_grid_pinpoints)
    assert torch.equal(direct, anyres[0])
    mixed = process_images([wide, Image.new("RGB", (64, 64))], tiny_image_processor, cfg)
    assert isinstance(mixed, list) and [t.shape[0] for t in mixed] == [3, 5]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("liuhaotian/llava-v1.5-7b", "llava-v1.5-7b"),
        ("./checkpoints/run/", "run"),
        ("/out/run/checkpoint-200", "run_checkpoint-200"),
        ("checkpoint-5", "checkpoint-5"),
    ],
)
def test_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name


def test_keywords_stopping_criteria(tiny_tokenizer):
    prompt = torch.tensor([tiny_tokenizer("USER: hi ASSISTANT:").input_ids])
    criteria = KeywordsStoppingCriteria(["</s>"], tiny_tokenizer, prompt)
    eos = tiny_tokenizer.eos_token_id
    word = tiny_tokenizer("ok", add_special_tokens=False).input_ids
    running = torch.cat([prompt, torch.tensor([word])], dim=1)
    done = torch.cat([prompt, torch.tensor([word + [eos]])], dim=1)
    assert not criteria(running, None)
    assert criteria(done, None)
    # A batch stops only when every row is done.
    assert not criteria(torch.cat([done, torch.cat([running, torch.tensor([[word[0]]])], 1)]), None)
    text_stop = KeywordsStoppingCriteria(["###"], tiny_tokenizer, prompt)
    hashes = tiny_tokenizer("###", add_special_tokens=False).input_ids
    assert text_stop(torch.cat([prompt, torch.tensor([word + hashes])], dim=1), None)


# ----------------------------------------------------------------------------------------------------------------
# The fast CLIP transform gives the processor's pixels


def _reference_pixels(image, processor, cfg) -> torch.Tensor:
    """What upstream's process_images computes: the processor itself on each (padded / tiled) image."""
    if cfg.image_aspect_ratio == "pad":
        color = tuple(int(value * 255) for value in processor.image_mean)
        return processor.preprocess([expand2square(image, color)], return_tensors="pt")["pixel_values"]
    if cfg.image_aspect_ratio == "anyres":
        best = select_best_resolution(image.size, cfg.image_grid_pinpoints)
        tiles = divide_to_patches(resize_and_pad_image(image, best), processor.crop_size["height"])
        side = processor.size["shortest_edge"]
        views = [image.resize((side, side)), *tiles]
        return processor.preprocess(views, return_tensors="pt")["pixel_values"][None]
    return processor.preprocess([image], return_tensors="pt")["pixel_values"]


def _level_difference(ours: torch.Tensor, theirs: torch.Tensor, processor) -> float:
    """Largest difference in 8-bit levels before normalisation (1.0 = 1/255)."""
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    return ((ours - theirs).abs() * std * 255).max().item()


@pytest.fixture
def no_processor_calls(tiny_image_processor, monkeypatch):
    """The processor's own preprocess must not run: the fast path has to be the one measured."""

    def fail(*args, **kwargs):
        raise AssertionError("the processor's preprocess ran: the fast transform was not used")

    monkeypatch.setattr(tiny_image_processor, "preprocess", fail)
    monkeypatch.setattr(tiny_image_processor, "__call__", fail)
    return tiny_image_processor


@pytest.mark.parametrize("aspect", ["square", "pad", "anyres"])
def test_fast_transform_matches_the_processor_on_every_tiny_image(tiny, tiny_image_processor, aspect, monkeypatch):
    import json

    from llava.testing.sizes import IMAGE_GRID_PINPOINTS

    cfg = types.SimpleNamespace(image_aspect_ratio=aspect, image_grid_pinpoints=IMAGE_GRID_PINPOINTS)
    records = [record for record in json.loads(tiny.data.read_text()) if "image" in record]
    seen, worst = set(), 0.0
    for record in records:
        with Image.open(tiny.image_folder / record["image"]) as image:
            image.load()
        seen.add((image.mode, image.format, (image.width > image.height) - (image.width < image.height)))
        expected = _reference_pixels(image, tiny_image_processor, cfg)
        with monkeypatch.context() as patch:
            patch.setattr(tiny_image_processor, "preprocess", lambda *a, **k: pytest.fail("processor ran"))
            ours = process_images([image], tiny_image_processor, cfg)
        assert ours.shape == expected.shape and ours.dtype == torch.float32, record["id"]
        worst = max(worst, _level_difference(ours, expected, tiny_image_processor))
    # Every mode, both formats, wide, tall and square images went through.
    assert {mode for mode, _, _ in seen} == {"RGB", "L", "RGBA", "P"}
    assert {fmt for _, fmt, _ in seen} == {"PNG", "JPEG"} and {shape for _, _, shape in seen} == {-1, 0, 1}
    assert worst <= 1.0 + 1e-3, worst


def _photo_like_jpeg(width: int, height: int, seed: int) -> Image.Image:
    """Smooth structure, hard edges and sensor-like noise, JPEG-compressed: what a COCO photo exercises."""
    import io

    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(xx / 17.0 + c) * np.cos(yy / 23.0 - c) for c in range(3)], -1)
    base[(xx // 60 + yy // 45) % 3 == 0] *= 0.4
    base += rng.normal(0, 12, base.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (500, 375), (336, 336), (200, 150)])
def test_fast_transform_matches_clip_l_336_on_photos(size):
    from transformers import CLIPImageProcessorPil

    from llava.testing.sizes import CLIP_MEAN, CLIP_STD

    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    image = _photo_like_jpeg(*size, seed=sum(size))
    for aspect in ("square", "pad"):
        cfg = types.SimpleNamespace(image_aspect_ratio=aspect)
        expected = _reference_pixels(image, processor, cfg)
        ours = process_images([image], processor, cfg)
        assert ours.shape == expected.shape == (1, 3, 336, 336)
        assert _level_difference(ours, expected, processor) <= 1.0 + 1e-3, aspect
        # Same values almost everywhere: one level off only where PIL's sum sits on a rounding boundary.
        assert (ours - expected).abs().gt(1e-4).float().mean() < 0.01


def test_processors_the_fast_path_does_not_model_run_as_themselves(tiny_image_processor):
    from transformers import CLIPImageProcessorPil

    image = _photo_like_jpeg(64, 48, seed=1)
    settings = tiny_image_processor.to_dict()
    settings.pop("image_processor_type", None)
    lanczos = CLIPImageProcessorPil(**{**settings, "resample": Image.Resampling.LANCZOS})
    cfg = types.SimpleNamespace(image_aspect_ratio="square")
    assert torch.equal(process_images([image], lanczos, cfg), _reference_pixels(image, lanczos, cfg))


@pytest.mark.dist
def test_vision_tower_loads_the_pil_processor_without_the_torchvision_warning(tiny):
    import subprocess
    import sys

    code = (
        "import types, sys\n"
        "from transformers import CLIPImageProcessorPil\n"
        "from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower\n"
        "tower = CLIPVisionTower(sys.argv[1], types.SimpleNamespace(mm_vision_select_layer=-2))\n"
        "assert type(tower.image_processor) is CLIPImageProcessorPil, type(tower.image_processor)\n"
        "assert tower.image_processor.crop_size['height'] == 32\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tiny.vision_tower)], check=False, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torchvision" not in result.stderr, result.stderr[-2000:]
