"""The projector from vision features to the language model's embedding space (upstream's types and key names)."""

from __future__ import annotations

import re

import torch.nn as nn

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


class IdentityMap(nn.Module):
    """Passes features through unchanged (``mm_projector_type: identity``; needs mm_hidden_size == hidden_size)."""

    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self):
        return {"mm_projector_type": "identity"}


class SimpleResBlock(nn.Module):
    """Pre-norm residual MLP block (kept for upstream API parity)."""

    def __init__(self, channels: int):
        super().__init__()
        self.pre_norm = nn.LayerNorm(channels)
        self.proj = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels))

    def forward(self, x):
        x = self.pre_norm(x)
        return x + self.proj(x)


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """``linear``, ``mlp<N>x_gelu`` (Linear, GELU, Linear, ...; LLaVA-1.5 uses mlp2x_gelu) or ``identity``.

    The module layout fixes the state-dict keys (``mm_projector.0.weight``, ``mm_projector.2.weight`` for
    mlp2x_gelu), which must match upstream's checkpoints and ``mm_projector.bin`` files.
    """
    projector_type = getattr(config, "mm_projector_type", "linear")
    if projector_type == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    match = _MLP_GELU.match(projector_type)
    if match:
        layers: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(1, int(match.group(1))):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        return IdentityMap()
    raise ValueError(
        f"Unknown projector type: {projector_type!r}. Use 'linear', 'mlp<N>x_gelu' (e.g. mlp2x_gelu) or 'identity'."
    )
