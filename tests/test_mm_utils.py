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
    mixed = process_images(
        [wide, Image.new("RGB", (64, 64))], tiny_image_processor, cfg
    )
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
