"""Build the vision tower named by a config (``mm_vision_tower``) or by training arguments (``vision_tower``)."""

from __future__ import annotations

import os

from .clip_encoder import CLIPVisionTower

# Hub names upstream accepts; they load only if already in the local Hugging Face cache (no downloads here).
_HUB_PREFIXES = ("openai", "laion")


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if name is None:
        raise ValueError("No vision tower configured: set --vision_tower (or mm_vision_tower in config.json).")
    if os.path.exists(name) or name.startswith(_HUB_PREFIXES) or "ShareGPT4V" in name:
        return CLIPVisionTower(name, args=vision_tower_cfg, **kwargs)
    raise ValueError(
        f"Unknown vision tower: {name!r} is not a directory. Pass the path of a local CLIP model directory "
        "(with config.json, weights and preprocessor_config.json) as --vision_tower / mm_vision_tower."
    )
