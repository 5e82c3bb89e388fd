"""Upstream's ``replace_llama_attn_with_xformers_attn()``, without the monkey patch.

Upstream replaced transformers 4.3x's ``LlamaAttention.forward`` with an ``xformers`` memory-efficient attention body
(for GPUs without flash-attention, V100s). PyTorch's SDPA, which transformers uses by default, runs the same kind of
memory-efficient kernel, so nothing is patched: the function picks transformers' SDPA, says so once, and returns its
name for ``train(attn_implementation=...)`` (docs/upstream_differences.md #23).
"""

from __future__ import annotations

from llava.model.attention import SDPA, choose_instead_of_patch


def replace_llama_attn_with_xformers_attn() -> str:
    """The attention implementation to train with instead of upstream's patch: ``sdpa``."""
    return choose_instead_of_patch("xformers", SDPA)
