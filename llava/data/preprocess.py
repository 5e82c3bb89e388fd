"""Conversation templating and label masking for supervised fine-tuning.

Upstream LLaVA builds each prompt with ``Conversation.get_prompt()`` and then finds the assistant replies again by
re-tokenising pieces of the prompt and counting tokens (``instruction_len - 2``, ``round_len -= 1`` for
non-legacy tokenizers, ...). When the count does not add up it prints "tokenization mismatch" and trains on
nothing for that sample (upstream #661, #1166, #1706): empty replies, conversations ending on a human turn,
replies containing ``</s>`` or the role string.

Here the prompt is rendered as a list of :class:`Segment` pieces, each marked as supervised or not, whose
concatenation is upstream's prompt string. The prompt is tokenised once (for image prompts: its ``<image>``-separated
chunks in one batched call, assembled exactly like ``tokenizer_image_token``) with character offsets, and every token
takes the label of the character it starts at. For every conversation upstream masks without a mismatch the result
is identical to upstream's; for the others the labels are still right: only the assistant replies and the
separator that ends each reply are supervised.

What each template supervises (the text upstream's counting lands on when it works):

- TWO (v1, vicuna_v1, llava_v1, v1_mmtag): ``... ASSISTANT: {a}</s>`` supervises ``" {a}</s>"``.
- LLAMA_2 (llama_2, llava_llama_2, mistral_instruct): ``... [/INST] {a} </s>`` supervises ``" {a} </s>"``.
- MPT (mpt, chatml_direct): ``...<|im_start|>assistant\n{a}<|im_end|>`` supervises ``"{a}<|im_end|>"``. Upstream's
  count is one token short in the first round with every tokenizer that adds BOS, so it reports a mismatch for
  every sample; the reply and its end marker are what the other templates supervise.
- PLAIN: ``<image>{caption}\n`` supervises ``"{caption}\n"``.

The rendered prompt is always exactly upstream's ``get_prompt()`` string, so ``input_ids`` never differ from
upstream's. Empty messages render as upstream renders them (``ASSISTANT:`` with no separator; nothing at all for
llama_2) and an empty reply supervises nothing: upstream keeps some such samples (a non-final empty reply with
llama_2) and trains nothing for that reply, and data with empty replies is usually broken data that should not
teach the model to stop at once. A separator string inside a message (``</s>``) is tokenised as that special
token, as upstream does, and is supervised when it is inside a reply. A turn that is supervised starts at the space
after the role header (``" {a}"``), which the tokenizer merges into the reply's first token.

Templates that none of the above match (llava_v0, v0_mmtag, vicuna_v0: the "###" format) take upstream's generic
path, reproduced exactly with its quirks (see :func:`_preprocess_hash_format`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from llava import conversation as conversation_lib
from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.conversation import Conversation, SeparatorStyle
from llava.data.vision import VisionSetup
from llava.tokenization import encode

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer

logger = logging.getLogger(__name__)

HUMAN = "human"
GPT = "gpt"
# How the image placeholder is wrapped for the *_mmtag templates.
MMTAG_IMAGE = "<Image>" + DEFAULT_IMAGE_TOKEN + "</Image>"
# The generic path's hard-coded turn markers (upstream's _add_speaker_and_signal).
HASH_BEGIN = "### "
HASH_END = "\n"

Source = Sequence[dict]


class Segment(NamedTuple):
    """A piece of the rendered prompt and whether its tokens are supervised."""

    text: str
    target: bool


class Turn(NamedTuple):
    from_human: bool
    value: str


# ----------------------------------------------------------------------------------------------------------------
# Validation


STRUCTURE = "structure"
ROLES = "roles"


class ConversationError(ValueError):
    """A conversation that cannot be rendered; ``kind`` is the data rule it breaks (``STRUCTURE`` or ``ROLES``).

    The message names the turn; callers add the sample id and the file.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def conversation_turns(source: Source, *, keep_leading_gpt: bool = False) -> list[Turn]:
    """Check a conversation's structure and roles and return its turns: the one implementation of those rules,
    for preprocessing and for the data checks (`llava.data.validation`).

    Turns must come from ``"human"`` and ``"gpt"`` alternately. A first turn from ``"gpt"`` is allowed and dropped
    (as upstream's v1/llama_2/mpt paths do), or kept with ``keep_leading_gpt`` (upstream's '###' path).
    Raises :class:`ConversationError`.
    """
    if not isinstance(source, (list, tuple)) or not source:
        raise ConversationError(
            STRUCTURE, "'conversations' must be a non-empty list of {'from': ..., 'value': ...} turns"
        )
    turns = []
    for index, turn in enumerate(source):
        if not isinstance(turn, dict):
            raise ConversationError(
                STRUCTURE, f"turn {index} is {type(turn).__name__}; expected an object with 'from' and 'value'"
            )
        speaker, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise ConversationError(
                STRUCTURE, f"turn {index} has 'value' of type {type(value).__name__}; expected a string"
            )
        if speaker not in (HUMAN, GPT):
            raise ConversationError(ROLES, f"turn {index} has 'from': {speaker!r}; expected 'human' or 'gpt'")
        turns.append(Turn(speaker == HUMAN, value))
    leading = 0 if turns[0].from_human else 1
    for index in range(leading, len(turns)):
        if turns[index].from_human != ((index - leading) % 2 == 0):
            expected = GPT if turns[index].from_human else HUMAN
            raise ConversationError(
                ROLES,
                f"turn {index} is from {source[index]['from']!r} but {expected!r} was expected: turns must "
                "alternate human, gpt, human, ... (a first turn from gpt is allowed)",
            )
    return turns if keep_leading_gpt else turns[leading:]


def validate_conversation(source: Source, conv: Conversation | None = None) -> list[Turn]:
    """The turns ``preprocess`` renders with template ``conv``; raises :class:`ConversationError` where it would
    reject the conversation."""
    conv = conv or conversation_lib.default_conversation
    turns = conversation_turns(source)
    if conv.sep_style == SeparatorStyle.PLAIN:
        _render_plain(source, conv)
    return turns


def _segments(source: Source, conv: Conversation) -> list[Segment]:
    turns = conversation_turns(source)
    if conv.sep_style == SeparatorStyle.PLAIN:
        return _render_plain(source, conv)
    return render_segments(turns, conv)


# ----------------------------------------------------------------------------------------------------------------
# Multimodal turn rewriting


def preprocess_multimodal(
    sources: Sequence[Source],
    data_args,
    *,
    mm_use_im_start_end: bool | None = None,
    conv: Conversation | None = None,
) -> list[list[dict]]:
    """Move ``<image>`` to the front of its turn (followed by a newline) and wrap it as the model expects.

    With an ``mmtag`` template the placeholder becomes ``<Image><image></Image>``; with ``mm_use_im_start_end`` it
    is surrounded by ``<im_start>``/``<im_end>``. ``data_args`` is a :class:`~llava.data.vision.VisionSetup` (a
    multimodal run) or upstream's ``data_args``: then nothing happens unless ``data_args.is_multimodal``, and
    ``mm_use_im_start_end`` defaults to ``data_args.mm_use_im_start_end``, as upstream. ``conv`` defaults to
    ``default_conversation``. Unlike upstream, the input is left untouched: changed turns are returned as new dicts,
    so callers need no deep copy.
    """
    if not isinstance(data_args, VisionSetup) and not getattr(data_args, "is_multimodal", False):
        return sources
    if mm_use_im_start_end is None:
        mm_use_im_start_end = bool(getattr(data_args, "mm_use_im_start_end", False))
    conv = conv or conversation_lib.default_conversation
    placeholder = MMTAG_IMAGE if "mmtag" in conv.version else DEFAULT_IMAGE_TOKEN
    if mm_use_im_start_end:
        wrapped = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
        placeholder = placeholder.replace(DEFAULT_IMAGE_TOKEN, wrapped)
    result = []
    for source in sources:
        turns = []
        for turn in source:
            value = turn["value"]
            if DEFAULT_IMAGE_TOKEN in value:
                text = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
                # strip() again as upstream: an image-only turn becomes the bare placeholder.
                turn = {**turn, "value": (placeholder + "\n" + text).strip()}
            turns.append(turn)
        result.append(turns)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Rendering: a conversation as (text, supervised) segments


def render_segments(turns: Sequence[Turn], conv: Conversation) -> list[Segment]:
    """The prompt upstream's ``conv.get_prompt()`` builds, cut into supervised and unsupervised pieces."""
    style = conv.sep_style
    if style == SeparatorStyle.TWO:
        return _render_two(turns, conv)
    if style == SeparatorStyle.LLAMA_2:
        return _render_llama_2(turns, conv)
    if style == SeparatorStyle.MPT:
        return _render_mpt(turns, conv)
    raise ValueError(f"template style {style} has no segment renderer (PLAIN and '###' have their own paths)")


def _render_two(turns: Sequence[Turn], conv: Conversation) -> list[Segment]:
    human, assistant = conv.roles
    segments = [Segment(conv.system + conv.sep, False)]
    for turn in turns:
        if turn.from_human:
            segments.append(Segment(f"{human}: {turn.value}{conv.sep}" if turn.value else f"{human}:", False))
        else:
            segments.append(Segment(f"{assistant}:", False))
            if turn.value:
                segments.append(Segment(f" {turn.value}{conv.sep2}", True))
    return segments


def _render_llama_2(turns: Sequence[Turn], conv: Conversation) -> list[Segment]:
    segments = []
    for index, turn in enumerate(turns):
        if index == 0:
            # Upstream cannot render an empty first message (it asserts); here it gets the usual format.
            system = f"<<SYS>>\n{conv.system}\n<</SYS>>\n\n" if conv.system else ""
            # Upstream writes sep before every [INST] and strips it from the start of the prompt.
            segments.append(Segment(f"[INST] {system}{turn.value} [/INST]", False))
        elif turn.from_human and turn.value:
            segments.append(Segment(f"{conv.sep}[INST] {turn.value} [/INST]", False))
        elif turn.value:
            segments.append(Segment(f" {turn.value} {conv.sep2}", True))
    return segments


def _render_mpt(turns: Sequence[Turn], conv: Conversation) -> list[Segment]:
    human, assistant = conv.roles
    segments = [Segment(conv.system + conv.sep, False)]
    for turn in turns:
        if turn.from_human:
            segments.append(Segment(human + turn.value + conv.sep if turn.value else human, False))
        else:
            segments.append(Segment(assistant, False))
            if turn.value:
                segments.append(Segment(turn.value + conv.sep, True))
    return segments


def _render_plain(source: Source, conv: Conversation) -> list[Segment]:
    """Upstream's preprocess_plain: the first turn becomes the bare ``<image>``, then caption + sep (supervised)."""
    if len(source) != 2 or DEFAULT_IMAGE_TOKEN not in source[0]["value"]:
        raise ConversationError(
            STRUCTURE,
            "the 'plain' template (projector pretraining) needs exactly two turns, the first containing "
            f"'{DEFAULT_IMAGE_TOKEN}' and the second the caption; this sample has {len(source)} turn(s)"
            + (f" and no '{DEFAULT_IMAGE_TOKEN}' in the first" if len(source) == 2 else ""),
        )
    return [Segment(DEFAULT_IMAGE_TOKEN, False), Segment(source[1]["value"] + conv.sep, True)]


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation with character offsets


class _Chunk(NamedTuple):
    """Tokens of one ``<image>``-free piece of a prompt, with their character spans inside that piece."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    position: int  # where the piece starts in the prompt


def _tokenize(texts: Sequence[str], tokenizer: Tokenizer, *, has_image: bool) -> list[list[_Chunk]]:
    """Tokenise each text as upstream does, keeping character offsets; ONE tokenizer call for all of them.

    Ids are those of upstream's slow sentencepiece tokenizer (see ``llava.tokenization``). Text-only prompts:
    ``tokenizer(text, max_length=model_max_length, truncation=True)``, one chunk each. Image
    prompts are split at ``<image>`` and cut like upstream's ``tokenizer_image_token``: every chunk tokenised alone,
    the first chunk kept whole, the others without their first token (their own BOS) when the first chunk starts
    with BOS; ``IMAGE_TOKEN_INDEX`` goes between consecutive chunks (see :func:`_ids`).
    """
    if not has_image:
        encoded = encode(tokenizer, texts, offsets=True, max_length=tokenizer.model_max_length)
        return [[_Chunk(ids, offsets, 0)] for ids, offsets in zip(encoded.ids, encoded.offsets)]

    split = [text.split(DEFAULT_IMAGE_TOKEN) for text in texts]
    all_ids, all_offsets = encode(tokenizer, [piece for pieces in split for piece in pieces], offsets=True)
    bos = tokenizer.bos_token_id
    result, flat_index = [], 0
    for pieces in split:
        first = all_ids[flat_index]
        skip = 1 if first and first[0] == bos else 0
        chunks, position = [], 0
        for index, piece in enumerate(pieces):
            cut = skip if index else 0
            ids, offsets = all_ids[flat_index + index], all_offsets[flat_index + index]
            chunks.append(_Chunk(ids[cut:], offsets[cut:], position))
            position += len(piece) + len(DEFAULT_IMAGE_TOKEN)
        flat_index += len(pieces)
        result.append(chunks)
    return result


def _ids(chunks: Sequence[_Chunk]) -> list[int]:
    ids = list(chunks[0].ids)
    for chunk in chunks[1:]:
        ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk.ids)
    return ids


def _labels(chunks: Sequence[_Chunk], segments: Sequence[Segment]) -> list[int]:
    """Each token's id if its first character lies in a supervised segment, else IGNORE_INDEX.

    Tokens that cover no character (BOS, the image placeholder) are never supervised. A token spanning a segment
    boundary takes the label of its first character; with the templates' separators being whole tokens (or
    starting a new word), that only happens with a tokenizer lacking the template's special tokens.
    """
    supervised = bytearray(sum(len(text) for text, _ in segments))
    position = 0
    for text, target in segments:
        if target:
            supervised[position : position + len(text)] = b"\x01" * len(text)
        position += len(text)
    labels: list[int] = []
    for index, (ids, offsets, start) in enumerate(chunks):
        if index:
            labels.append(IGNORE_INDEX)  # the image placeholder
        labels.extend(
            [
                token if begin < end and supervised[start + begin] else IGNORE_INDEX
                for token, (begin, end) in zip(ids, offsets)
            ]
        )
    return labels


def _long(values: Sequence[int]) -> torch.Tensor:
    # Through numpy: about 4x faster than torch.tensor(list) on this hot path.
    return torch.from_numpy(np.asarray(values, dtype=np.int64))


def _stack_rows(rows: Sequence[list[int]], fill: int | None) -> torch.Tensor:
    """(N, L) tensor of right-padded rows; ``fill`` is only needed when the rows differ in length."""
    if len(rows) == 1:
        return _long(rows[0]).unsqueeze(0)
    width = max(len(row) for row in rows)
    if all(len(row) == width for row in rows):
        return _long(rows)
    if fill is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (LLaVA uses the unk token)")
    return _long([row + [fill] * (width - len(row)) for row in rows])


# ----------------------------------------------------------------------------------------------------------------
# The masking routine and its public names


def _mask(sources: Sequence[Source], tokenizer: Tokenizer, has_image: bool, conv: Conversation) -> tuple[list, list]:
    """THE masking routine, for every template but '###': render, tokenise once, label by character offsets."""
    rendered = [_segments(source, conv) for source in sources]
    prompts = ["".join(text for text, _ in segments) for segments in rendered]
    tokenized = _tokenize(prompts, tokenizer, has_image=has_image)
    labels = [_labels(chunks, segments) for chunks, segments in zip(tokenized, rendered)]
    return [_ids(chunks) for chunks in tokenized], labels


def _as_batch(sources: Sequence[Source], tokenizer: Tokenizer, has_image: bool, conv: Conversation) -> dict:
    # Upstream stacks image prompts and pads text-only ones: (N, L) tensors either way.
    input_ids, labels = _mask(sources, tokenizer, has_image, conv)
    pad = tokenizer.pad_token_id if len(input_ids) > 1 else None
    return dict(input_ids=_stack_rows(input_ids, pad), labels=_stack_rows(labels, IGNORE_INDEX))


def _checked(conv: Conversation | None, style: SeparatorStyle, name: str) -> Conversation:
    # Upstream's preprocess_* render `default_conversation` (which its train() sets from --version) and assert its
    # style; a template passed as `conv` is used instead.
    conv = conv or conversation_lib.default_conversation
    if conv.sep_style != style:
        raise ValueError(f"{name} needs a template with separator style {style.name}; got {conv.sep_style.name}")
    return conv


def preprocess_v1(
    sources: Sequence[Source], tokenizer: Tokenizer, has_image: bool = False, *, conv: Conversation | None = None
) -> dict:
    """Vicuna v1 / LLaVA v1 templates (``SeparatorStyle.TWO``); ``conv`` defaults to ``default_conversation``."""
    return _as_batch(sources, tokenizer, has_image, _checked(conv, SeparatorStyle.TWO, "preprocess_v1"))


def preprocess_llama_2(
    sources: Sequence[Source], tokenizer: Tokenizer, has_image: bool = False, *, conv: Conversation | None = None
) -> dict:
    """Llama-2 chat templates (``SeparatorStyle.LLAMA_2``: llama_2, llava_llama_2, mistral_instruct); ``conv``
    defaults to ``default_conversation``, which must then be one of them (as upstream asserts)."""
    conv = _checked(conv, SeparatorStyle.LLAMA_2, "preprocess_llama_2")
    return _as_batch(sources, tokenizer, has_image, conv)


def preprocess_mpt(
    sources: Sequence[Source], tokenizer: Tokenizer, has_image: bool = False, *, conv: Conversation | None = None
) -> dict:
    """ChatML templates (``SeparatorStyle.MPT``: mpt, chatml_direct); ``conv`` defaults to ``default_conversation``,
    which must then be one of them (as upstream asserts)."""
    return _as_batch(sources, tokenizer, has_image, _checked(conv, SeparatorStyle.MPT, "preprocess_mpt"))


def preprocess_plain(sources: Sequence[Source], tokenizer: Tokenizer, *, conv: Conversation | None = None) -> dict:
    """Projector pretraining: ``<image>`` + caption + sep, only the caption and sep supervised.

    As upstream, the first turn is replaced by the bare ``<image>`` placeholder (its text, including any
    ``<im_start>``/``<im_end>``, is dropped). Returns lists of 1-D tensors, as upstream. Without ``conv`` the
    separator is ``default_conversation``'s, whatever its style, as upstream (``plain``'s ``"\n"`` once its train()
    sets it for ``--version plain``).
    """
    conv = conv or conversation_lib.default_conversation
    if conv.sep_style != SeparatorStyle.PLAIN:
        conv = dataclasses.replace(conv, sep_style=SeparatorStyle.PLAIN)
    input_ids, labels = _mask(sources, tokenizer, True, conv)
    return dict(input_ids=[_long(ids) for ids in input_ids], labels=[_long(row) for row in labels])


def _preprocess_hash_format(
    sources: Sequence[Source], tokenizer: Tokenizer, has_image: bool, conv: Conversation
) -> dict:
    """Upstream's generic path ("### Human: ...\\n### Assistant: ...\\n### "), reproduced bug for bug.

    Upstream never reports a mismatch here, so every sample it trains on must train the same. Its quirks: the
    header and each turn are tokenised alone (each with its own BOS) to step a cursor through the prompt, so the
    cursor drifts a token per turn; from each human turn the first two tokens stay supervised; assistant turns are
    supervised with their "### Assistant: " prefix, and so is the final "### ".
    """
    header = f"{conv.system}\n\n"
    input_ids, labels = [], []
    for source in sources:
        turns = conversation_turns(source, keep_leading_gpt=True)
        names = [conv.roles[0] if turn.from_human else conv.roles[1] for turn in turns]
        pieces = [f"{HASH_BEGIN}{name}: {turn.value}{HASH_END}" for name, turn in zip(names, turns)]
        prompt = header + "".join(pieces) + HASH_BEGIN
        encoded = [_ids(chunks) for chunks in _tokenize([prompt, header, *pieces], tokenizer, has_image=has_image)]
        ids, lengths = encoded[0], [_counted_length(piece_ids, tokenizer, has_image) for piece_ids in encoded[1:]]
        target = list(ids)
        cursor = lengths[0]
        target[:cursor] = [IGNORE_INDEX] * min(cursor, len(target))
        for turn, length in zip(turns, lengths[1:]):
            if turn.from_human:
                span = target[cursor + 2 : cursor + length]
                target[cursor + 2 : cursor + length] = [IGNORE_INDEX] * len(span)
            cursor += length
        input_ids.append(_long(ids))
        labels.append(_long(target))
    return dict(input_ids=input_ids, labels=labels)


def _counted_length(ids: Sequence[int], tokenizer: Tokenizer, has_image: bool) -> int:
    # Upstream's _tokenize_fn counts non-pad tokens; the image path counts all of them.
    if has_image:
        return len(ids)
    return sum(1 for token in ids if token != tokenizer.pad_token_id)


def preprocess(
    sources: Sequence[Source], tokenizer: Tokenizer, has_image: bool = False, conv: Conversation | None = None
) -> dict:
    """Tokenise conversations with template ``conv`` and mask everything but the assistant replies.

    ``sources`` is a list of conversations (lists of ``{"from", "value"}`` turns), ``conv`` defaults to
    ``llava.conversation.default_conversation``. Returns ``dict(input_ids, labels)`` with upstream's types: (N, L)
    tensors for the v1 / llama_2 / mpt templates (text-only prompts truncated to ``tokenizer.model_max_length``),
    lists of 1-D tensors for plain and the '###' templates. ``IMAGE_TOKEN_INDEX`` marks the image when
    ``has_image``. Raises ``ValueError`` for unknown roles or turns out of order.
    """
    conv = conv or conversation_lib.default_conversation
    if conv.sep_style == SeparatorStyle.PLAIN:
        return preprocess_plain(sources, tokenizer, conv=conv)
    if conv.sep_style == SeparatorStyle.LLAMA_2:
        return preprocess_llama_2(sources, tokenizer, has_image, conv=conv)
    if conv.version.startswith("v1"):
        return preprocess_v1(sources, tokenizer, has_image, conv=conv)
    if conv.version == "mpt":
        return preprocess_mpt(sources, tokenizer, has_image, conv=conv)
    return _preprocess_hash_format(sources, tokenizer, has_image, conv)
