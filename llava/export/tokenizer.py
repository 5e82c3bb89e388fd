"""The exported tokenizer: ours plus ``<image>`` (id = the old vocabulary size) and ``<pad>`` where there is none,
giving exactly the ids our ``tokenizer_image_token`` gives, with the image token where we put -200.

Transformers' Llava tokenizes the whole prompt at once, ``<image>`` being an added token; we (and upstream) cut the
prompt at ``<image>`` and tokenize each piece alone. For a Llama tokenizer with ``legacy: false`` the piece after
the image then starts with sentencepiece's "▁" (``"<image>\\nWhat"`` gives ``<image> ▁ <0x0A> What``), which a
whole-prompt pass leaves out (transformers' own llava-hf conversions lose it). The model was trained with that
"▁", so the export keeps it: ``<image>`` becomes a normalized added token and a normalizer rule writes "▁" after
the last ``<image>`` of a run of them, before the text that follows. Whether a tokenizer needs the rule is not
guessed: :func:`exported_tokenizer` tries the plain added token first, then the rule, and keeps the first that
gives our ids on every probe prompt (raising when neither does).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.mm_utils import tokenizer_image_token

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
SENTENCEPIECE_SPACE = "\u2581"
# "<image>" that ends a run of them and is followed by something: the "▁" goes there. (An "<image>" at the very
# end is left alone; the token's own content, normalized, must stay "<image>".)
AFTER_IMAGE_PATTERN = rf"{DEFAULT_IMAGE_TOKEN}(?!{DEFAULT_IMAGE_TOKEN})(?=[\s\S])"
# Transformers pads the embeddings to a multiple of 64 (convert_llava_weights_to_hf.py) for faster matmuls.
VOCAB_MULTIPLE = 64


def reference_ids(prompt: str, tokenizer: Any, image_token_id: int) -> list[int]:
    """Our ids for ``prompt``, with the image token id where the splice would put the image's features."""
    return [
        image_token_id if token == IMAGE_TOKEN_INDEX else token for token in tokenizer_image_token(prompt, tokenizer)
    ]


def exported_tokenizer(tokenizer: Any, probes: Sequence[str]) -> Any:
    """A copy of ``tokenizer`` with ``<image>`` (and ``<pad>``, when it has no pad token) that tokenizes each of
    ``probes`` (prompts holding ``<image>``) as we do.

    Raises:
        ValueError: no variant gives our ids (a tokenizer this export does not know how to reproduce).
    """
    if not probes:
        raise ValueError("exported_tokenizer needs at least one probe prompt holding <image>")
    attempts = []
    mismatch = None
    for with_rule in (False, True):
        candidate = _with_image_token(tokenizer, with_rule)
        image_token_id = candidate.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
        mismatch = next(
            (p for p in probes if candidate(p).input_ids != reference_ids(p, tokenizer, image_token_id)), None
        )
        if mismatch is None:
            rule = " and the normalizer writes '▁' after it, as we tokenize" if with_rule else ""
            logger.info("<image> is token %d%s", image_token_id, rule)
            if candidate.pad_token is None:
                candidate.add_special_tokens({"pad_token": PAD_TOKEN})
            return candidate
        attempts.append(
            f"{'with' if with_rule else 'without'} the '▁' rule: {candidate.convert_ids_to_tokens(candidate(mismatch).input_ids)} "
            f"vs ours {candidate.convert_ids_to_tokens(reference_ids(mismatch, tokenizer, image_token_id))}"
        )
    raise ValueError(
        f"the exported tokenizer cannot give the ids this model was trained with on {mismatch!r}: "
        + "; ".join(attempts)
    )


def _with_image_token(tokenizer: Any, with_rule: bool) -> Any:
    """A fresh copy of ``tokenizer`` (saved and reloaded) with ``<image>`` added as a special token."""
    from tokenizers import AddedToken, Regex, normalizers
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        copy = AutoTokenizer.from_pretrained(tmp)
    if DEFAULT_IMAGE_TOKEN in copy.get_vocab():
        raise ValueError(f"the tokenizer already has a {DEFAULT_IMAGE_TOKEN} token; this export adds its own")
    copy.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=with_rule)], special_tokens=True)
    if with_rule:
        backend = copy.backend_tokenizer
        rule = normalizers.Replace(Regex(AFTER_IMAGE_PATTERN), DEFAULT_IMAGE_TOKEN + SENTENCEPIECE_SPACE)
        existing = backend.normalizer
        backend.normalizer = rule if existing is None else normalizers.Sequence([rule, existing])
    return copy


def padded_rows(count: int) -> int:
    """``count`` rounded up to a multiple of :data:`VOCAB_MULTIPLE`."""
    return -(-count // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
