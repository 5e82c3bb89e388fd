"""Multiscale vision features (S2, "scaling on scales"; upstream's ``CLIPVisionTowerS2``), written here.

Upstream's tower imports ``s2wrapper``, which is only on GitHub (bfshi/scaling_on_scales), not on PyPI. What it
computes, for scales ``s_1 < s_2 < ...`` (all multiples of the tower's input size ``s_1``): the image is resized
to each scale (bicubic, in float32), cut into ``(s_k / s_1)^2`` tiles of the tower's input size, every tile of every
image goes through the tower in one batch, each scale's tile features are laid back into one feature map, which is
area-averaged down to the first scale's map; the maps are concatenated along the channels. So the output has the
single-scale tower's token count and ``len(scales)`` times its width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_S2_SCALES = "336,672,1008"  # upstream's default for `s2_scales`


def parse_s2_scales(scales: str | Sequence[int]) -> list[int]:
    """``"336,672,1008"`` (upstream's form) or a list -> the sorted scales; each must be a multiple of the smallest.

    Raises:
        ValueError: a scale is not a positive integer or not a multiple of the smallest (its tiles would not be
            the tower's input size).
    """
    try:
        values = sorted(int(value) for value in (scales.split(",") if isinstance(scales, str) else scales))
    except ValueError:
        raise ValueError(
            f"--s2_scales {scales!r} is not a comma-separated list of sizes, e.g. '336,672,1008'"
        ) from None
    if not values or values[0] <= 0 or any(value % values[0] for value in values):
        raise ValueError(
            f"--s2_scales {scales!r}: every scale must be a positive multiple of the smallest, which is the vision "
            "tower's input size (e.g. '336,672,1008' for CLIP ViT-L/14-336)"
        )
    return values


def multiscale_forward(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales: Sequence[int]
) -> torch.Tensor:
    """(B, N, D) tower features of ``images`` (B, C, H, W) -> (B, N, D * len(scales)), see the module docstring.

    ``forward`` maps (b, C, s, s) tiles, ``s = scales[0]``, to (b, N, D) with N a square number.
    """
    tile = scales[0]
    batch = images.shape[0]
    tiles_per_scale = []
    for scale in scales:
        resized = F.interpolate(images.to(torch.float32), size=(scale, scale), mode="bicubic").to(images.dtype)
        per_side = scale // tile
        # (B, C, n*s, n*s) -> (n*n*B, C, s, s), row-major over the tiles, images innermost.
        grid = resized.unflatten(2, (per_side, tile)).unflatten(4, (per_side, tile))
        tiles_per_scale.append(grid.permute(2, 4, 0, 1, 3, 5).flatten(0, 2))
    counts = [len(tiles) for tiles in tiles_per_scale]
    features = torch.split(forward(torch.cat(tiles_per_scale)), counts)
    side = math.isqrt(features[0].shape[1])
    if side * side != features[0].shape[1]:
        raise ValueError(f"S2 needs a square grid of patch features; the tower gives {features[0].shape[1]}")
    maps = []
    for scale, feature in zip(scales, features):
        per_side = scale // tile
        # (n*n*B, side*side, D) -> (B, D, n*side, n*side)
        grid = feature.unflatten(0, (per_side, per_side, batch)).unflatten(3, (side, side))
        grid = grid.permute(2, 5, 0, 3, 1, 4).flatten(4, 5).flatten(2, 3)
        maps.append(F.interpolate(grid.to(torch.float32), size=(side, side), mode="area").to(feature.dtype))
    return torch.cat(maps, dim=1).flatten(2).transpose(1, 2)
