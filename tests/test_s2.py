"""The S2 (multiscale) vision tower: upstream's ``CLIPVisionTowerS2`` names and feature shapes, our own forward.

Upstream's tower needs ``s2wrapper``, which is not on PyPI, so upstream's side cannot run here: the reference is
s2wrapper's published procedure written plainly (one loop per scale, tiles cut and laid back one by one, as its
``split_chessboard`` / ``merge_chessboard``), and the shapes are the ones upstream's code produces: the single-scale
token count, ``len(scales)`` times the tower's width, images preprocessed at the largest scale.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from train_helpers import multimodal_flags

from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower, CLIPVisionTowerS2
from llava.testing.sizes import CLIP_HIDDEN, CLIP_IMAGE_SIZE, CLIP_PATCH_SIZE

SCALES = "32,64,96"  # the tiny tower's 32 px input, like 336,672,1008 for CLIP ViT-L/14-336
NUM_SCALES = 3
PATCHES = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2


def _tower_args(tiny, **overrides):
    values = dict(vision_tower=str(tiny.vision_tower), mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    return SimpleNamespace(**{**values, **overrides})


def _s2_reference(features, images, scales):
    """s2wrapper's multiscale forward, step by step."""
    batch, outputs = images.shape[0], []
    for scale in scales:
        resized = F.interpolate(images.float(), size=(scale, scale), mode="bicubic")
        splits, size = scale // scales[0], scales[0]
        tiles = torch.cat(
            [
                resized[:, :, i * size : (i + 1) * size, j * size : (j + 1) * size]
                for i in range(splits)
                for j in range(splits)
            ]
        )
        out = features(tiles)
        side = int(out.shape[1] ** 0.5)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        rows = [
            torch.cat([out[(i * splits + j) * batch : (i * splits + j + 1) * batch] for j in range(splits)], dim=-1)
            for i in range(splits)
        ]
        outputs.append(torch.cat(rows, dim=-2))
    size = outputs[0].shape[-2:]
    merged = torch.cat([F.interpolate(out, size=size, mode="area") for out in outputs], dim=1)
    return merged.flatten(2).transpose(1, 2)


def test_s2_tower_has_upstreams_shapes_and_the_published_features(tiny):
    tower = build_vision_tower(_tower_args(tiny, s2=True, s2_scales=SCALES))
    assert isinstance(tower, CLIPVisionTowerS2) and isinstance(tower, CLIPVisionTower)
    assert (tower.s2_scales, tower.s2_split_size, tower.s2_image_size) == ([32, 64, 96], 32, 96)
    assert tower.hidden_size == CLIP_HIDDEN * NUM_SCALES and tower.num_patches == PATCHES
    assert tower.image_processor.crop_size["height"] == tower.image_processor.crop_size["width"] == 96
    assert tower.image_processor.size["shortest_edge"] == 96
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    features = tower(images)
    assert features.shape == (2, PATCHES, CLIP_HIDDEN * NUM_SCALES)
    torch.testing.assert_close(features, _s2_reference(tower._features, images, [32, 64, 96]), rtol=0, atol=1e-5)
    # The first scale's channels are the single-scale tower's features of the image at the tower's size.
    single = build_vision_tower(_tower_args(tiny))
    small = F.interpolate(images, size=(32, 32), mode="bicubic")
    torch.testing.assert_close(features[..., :CLIP_HIDDEN], single(small), rtol=0, atol=1e-5)
    # A list of images (anyres-style input) gives one feature tensor per image.
    per_image = tower([images[0], images[1]])
    torch.testing.assert_close(torch.cat(per_image), features, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ("32,48", "every scale must be a positive multiple of the smallest"),
        ("32,x", "is not a comma-separated list of sizes"),
        ("64,128", "the smallest scale must be the vision tower's input size, 32"),
    ],
)
def test_bad_s2_scales_are_named(tiny, scales, message):
    with pytest.raises(ValueError, match=message):
        build_vision_tower(_tower_args(tiny, s2=True, s2_scales=scales))


def test_bad_s2_scales_stop_the_flags(tiny, tmp_path):
    from llava.train.arguments import ArgumentsError, parse_args

    with pytest.raises(ArgumentsError, match="--s2_scales '32,48': every scale must be"):
        parse_args(multimodal_flags(tiny, tmp_path, s2=True, s2_scales="32,48"))


def test_s2_run_trains_saves_and_loads_the_s2_tower(tiny, tmp_path):
    from llava.model.builder import load_pretrained_model
    from llava.train.train import train

    run = tmp_path / "s2-lora"
    trainer = train(
        argv=multimodal_flags(
            tiny, run, s2=True, s2_scales=SCALES, pretrain_mm_mlp_adapter=None, max_steps=1, save_steps=1
        )
    )
    config = json.loads((run / "config.json").read_text())
    assert (config["s2"], config["s2_scales"], config["mm_hidden_size"]) == (True, SCALES, CLIP_HIDDEN * NUM_SCALES)
    tokenizer, model, processor, _ = load_pretrained_model(run, tiny.llm, None, device="cpu")
    assert isinstance(model.get_vision_tower(), CLIPVisionTowerS2)
    assert processor.crop_size["height"] == 96
    ids = torch.tensor([[1, 306, -200, 307]])
    images = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loaded = model(input_ids=ids, images=images).logits
        trained = trainer.model.eval()(input_ids=ids, images=images).logits
    assert loaded.shape[1] == 3 + PATCHES
    torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-4)
