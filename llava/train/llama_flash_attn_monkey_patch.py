"""Upstream's ``replace_llama_attn_with_flash_attn()``, without the monkey patch.

Upstream replaced transformers 4.3x's ``LlamaAttention.forward`` with a flash-attention body of its own. Transformers
now ships flash-attention-2 itself (``attn_implementation="flash_attention_2"``), for Llama, Mistral and packed
batches alike, so nothing is patched: the function picks transformers' implementation (flash-attention-2 where it
can run, SDPA otherwise), says so once, and returns its name for ``train(attn_implementation=...)``
(docs/upstream_differences.md #23).
"""

from __future__ import annotations

from llava.model.attention import FLASH_ATTENTION, choose_instead_of_patch


def replace_llama_attn_with_flash_attn() -> str:
    """The attention implementation to train with instead of upstream's patch: ``flash_attention_2`` or ``sdpa``."""
    return choose_instead_of_patch("flash-attention", FLASH_ATTENTION)
