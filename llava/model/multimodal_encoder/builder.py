"""Build the vision tower named by a config (``mm_vision_tower``) or by training arguments (``vision_tower``)."""

from __future__ import annotations

from .clip_encoder import CLIPVisionTower, CLIPVisionTowerS2


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    """A CLIP tower from a local directory or any hub id (upstream accepted only ``openai/``, ``laion/`` and
    ShareGPT4V names, docs/upstream_differences.md #15); a name that resolves to nothing fails with the resolver's
    message. ``s2`` (a config field or ``--s2``) makes it the multiscale :class:`CLIPVisionTowerS2`."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if name is None:
        raise ValueError("No vision tower configured: set --vision_tower (or mm_vision_tower in config.json).")
    if getattr(vision_tower_cfg, "s2", False):
        return CLIPVisionTowerS2(name, args=vision_tower_cfg, **kwargs)
    return CLIPVisionTower(name, args=vision_tower_cfg, **kwargs)
