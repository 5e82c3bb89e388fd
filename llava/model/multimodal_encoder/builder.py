"""Build the vision tower named by a config (``mm_vision_tower``) or by training arguments (``vision_tower``)."""

from __future__ import annotations

from .clip_encoder import CLIPVisionTower


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    """A CLIP tower from a local directory or any hub id (upstream accepted only ``openai/``, ``laion/`` and
    ShareGPT4V names, docs/upstream_differences.md #15); a name that resolves to nothing fails with the resolver's
    message."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if name is None:
        raise ValueError("No vision tower configured: set --vision_tower (or mm_vision_tower in config.json).")
    return CLIPVisionTower(name, args=vision_tower_cfg, **kwargs)
