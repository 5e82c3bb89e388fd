"""Token ids as upstream's slow sentencepiece ``LlamaTokenizer`` gives them, from the fast tokenizer.

Upstream loads every Llama tokenizer with ``use_fast=False`` (transformers 4.37). Transformers 5 only has the fast,
``tokenizers``-backed class; it reads the ``legacy`` flag of ``tokenizer_config.json`` into its ``Metaspace``
pre-tokenizer (``legacy: false`` -> prepend "▁" to the first piece of the input only, ``legacy: true`` -> to every
piece between added tokens) and gives the slow tokenizer's ids with one exception: a piece that starts with a space.

- The slow tokenizer always adds its "▁" prefix; the fast one adds it only when the piece does not already start
  with "▁" (a space). So ``" hello"`` is ``"▁", "▁h", ...`` slow and ``"▁h", ...`` fast.
- With ``legacy: false`` only the start of the whole input gets a prefix (pieces after a special token never do):
  the difference shows for inputs starting with a space, e.g. the ``<image>``-separated chunks of a plain caption
  that starts with a space, or of ``<image>`` in the middle of a turn.
- With ``legacy: true`` every piece between added tokens gets one: ``"</s> it"`` is ``"</s>", "▁", "▁it"`` slow.

:func:`encode` adds the missing space where the slow tokenizer would have its extra "▁" and maps the offsets back
to the original text. The check is a few substring searches per text; a second tokenizer call happens only for
the texts that need it, so the common case costs next to nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

# What both tokenizers read as a space at the start of a piece ("▁" is replaced by a space before encoding).
_LEADING_SPACE = (" ", "\u2581")


class Encoded(NamedTuple):
    ids: list[list[int]]
    offsets: list[list[tuple[int, int]]] | None


def prefix_scheme(tokenizer) -> str | None:
    """``"first"`` / ``"always"`` for sentencepiece-style tokenizers (legacy false / true), else ``None``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre_tokenizer = getattr(backend, "pre_tokenizer", None)
    if type(pre_tokenizer).__name__ != "Metaspace":
        return None
    return str(getattr(pre_tokenizer, "prepend_scheme", "always")).lower()


def encode(
    tokenizer,
    texts: Sequence[str],
    *,
    offsets: bool = False,
    max_length: int | None = None,
) -> Encoded:
    """``tokenizer(texts)`` (BOS included, truncated to ``max_length`` if given) with the slow tokenizer's ids."""
    kwargs = dict(max_length=max_length, truncation=True) if max_length is not None else {}
    encoded = tokenizer(list(texts), return_offsets_mapping=offsets, **kwargs)
    ids = encoded["input_ids"]
    spans = encoded["offset_mapping"] if offsets else None
    scheme = prefix_scheme(tokenizer)
    if scheme is None:
        return Encoded(ids, spans)
    # legacy: true splits at every added token (special or not), as the slow tokenizer's trie does.
    added = [token.content for token in tokenizer.added_tokens_decoder.values()] if scheme == "always" else []
    redo = {}
    for index, text in enumerate(texts):
        positions = _missing_prefixes(text, added)
        if positions:
            redo[index] = positions
    if redo:
        order = sorted(redo)
        patched = [_insert_spaces(texts[index], redo[index]) for index in order]
        again = tokenizer(patched, return_offsets_mapping=offsets, **kwargs)
        for row, index in enumerate(order):
            ids[index] = again["input_ids"][row]
            if offsets:
                spans[index] = _map_back(again["offset_mapping"][row], redo[index])
    return Encoded(ids, spans)


def _missing_prefixes(text: str, added: Sequence[str]) -> list[int]:
    """Where the slow tokenizer puts a "▁" that the fast one leaves out: before pieces starting with a space.

    That is the start of the text, and (``added`` given, for legacy: true) every point right after an added token.
    """
    positions = {0} if text.startswith(_LEADING_SPACE) else set()
    for content in added:
        start = text.find(content)
        while start != -1:
            end = start + len(content)
            if end < len(text) and text[end] in _LEADING_SPACE:
                positions.add(end)
            start = text.find(content, end)
    return sorted(positions)


def _insert_spaces(text: str, positions: Sequence[int]) -> str:
    pieces, previous = [], 0
    for position in positions:
        pieces.append(text[previous:position])
        pieces.append(" ")
        previous = position
    pieces.append(text[previous:])
    return "".join(pieces)


def _map_back(spans, positions) -> list[tuple[int, int]]:
    """Offsets in the patched text -> offsets in the original; an inserted space maps onto the space after it."""
    patched_at = [position + count for count, position in enumerate(positions)]  # where each insert landed

    def original(index: int) -> int:
        shift = sum(1 for spot in patched_at if spot < index)
        return index - shift

    result = []
    for begin, end in spans:
        start = original(begin)
        result.append((start, start) if begin == end else (start, max(original(end), start + 1)))
    return result
