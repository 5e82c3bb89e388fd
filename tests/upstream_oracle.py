"""Reference for label masking: upstream LLaVA's algorithm, re-implemented for tests only.

Mirrors ``llava/train/train.py`` at haotian-liu/LLaVA c121f04 (``preprocess_v1``, ``preprocess_llama_2``,
``preprocess_mpt``, ``preprocess_plain`` and the generic '###' path of ``preprocess`` with ``_add_speaker_and_signal``,
``_tokenize_fn`` and ``_mask_targets``) plus ``tokenizer_image_token`` from ``llava/mm_utils.py``, for ONE
conversation at a time. The prompt comes from ``Conversation.get_prompt()`` exactly as upstream builds it.

Upstream masks by counting tokens: it re-tokenises pieces of the prompt and walks a cursor through the labels,
subtracting fixed amounts (``- 2`` for BOS plus the trailing space, ``- 1`` for non-legacy tokenizers, ...). When
the cursor does not land on the prompt's length it prints "tokenization mismatch" and masks the whole sample. This
module reports that as ``mismatch=True`` instead of printing, so tests can tell which samples upstream keeps.

The quirks are reproduced on purpose; nothing here is meant as good behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import SeparatorStyle

# tokenizers >= 0.14 is installed, so upstream's IS_TOKENIZER_GREATER_THAN_0_14 is always true here.
TOKENIZERS_AT_LEAST_0_14 = True


@dataclass
class OracleResult:
    input_ids: list[int]
    labels: list[int]
    mismatch: bool  # upstream would print "tokenization mismatch" and train on nothing


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """Upstream's splitting of a prompt at ``<image>``: each chunk tokenised alone, BOS kept once, -200 between."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    skip = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = chunks[0][:skip]
    for index, chunk in enumerate(chunks):
        if index:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[skip:])
    return ids


def _count(text: str, tokenizer, has_image: bool) -> int:
    return len(tokenizer_image_token(text, tokenizer)) if has_image else len(tokenizer(text).input_ids)


def _prompt_ids(prompt: str, tokenizer, has_image: bool) -> list[int]:
    if has_image:
        return tokenizer_image_token(prompt, tokenizer)
    return tokenizer(prompt, max_length=tokenizer.model_max_length, truncation=True).input_ids


def upstream_prompt(source: list[dict], conv) -> str:
    """The prompt string upstream's preprocess_v1/llama_2/mpt build (a leading gpt turn is dropped)."""
    conv = conv.copy()
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    if roles[source[0]["from"]] != conv.roles[0]:
        source = source[1:]
    conv.messages = []
    for index, turn in enumerate(source):
        role = roles[turn["from"]]
        assert role == conv.roles[index % 2], "roles must alternate"
        conv.append_message(role, turn["value"])
    return conv.get_prompt()


def _finish(ids: list[int], labels: list[int], cursor: int, tokenizer) -> OracleResult:
    """Upstream's tail: mask after the cursor, then compare the cursor with the number of non-pad tokens."""
    labels[cursor:] = [IGNORE_INDEX] * max(0, len(labels) - cursor)
    total = sum(1 for token in ids if token != tokenizer.pad_token_id)
    mismatch = cursor < tokenizer.model_max_length and cursor != total
    if mismatch:
        labels = [IGNORE_INDEX] * len(labels)
    return OracleResult(ids, labels, mismatch)


def _mask_rounds(ids, rounds, reply_sep, tokenizer, has_image, cursor, instruction_offset, correction) -> OracleResult:
    """The loop shared by upstream's v1 / llama_2 / mpt bodies."""
    labels = list(ids)
    labels[:cursor] = [IGNORE_INDEX] * cursor
    for index, round_text in enumerate(rounds):
        if round_text == "":
            break
        parts = round_text.split(reply_sep)
        if len(parts) != 2:
            break
        instruction = parts[0] + reply_sep
        round_len = _count(round_text, tokenizer, has_image)
        instruction_len = _count(instruction, tokenizer, has_image) - instruction_offset
        if index != 0:
            round_len += correction
            instruction_len += correction
        end = min(cursor + instruction_len, len(labels))
        labels[cursor:end] = [IGNORE_INDEX] * max(0, end - cursor)
        cursor += round_len
    return _finish(ids, labels, cursor, tokenizer)


def oracle_v1(source, tokenizer, conv, has_image=False) -> OracleResult:
    prompt = upstream_prompt(source, conv)
    ids = _prompt_ids(prompt, tokenizer, has_image)
    # Non-legacy tokenizers: "USER" after "</s>" is one token less than the round tokenised alone.
    correction = -1 if (not tokenizer.legacy and TOKENIZERS_AT_LEAST_0_14) else 0
    reply_sep = conv.sep + conv.roles[1] + ": "
    return _mask_rounds(ids, prompt.split(conv.sep2), reply_sep, tokenizer, has_image, 1, 2, correction)


def oracle_llama_2(source, tokenizer, conv, has_image=False) -> OracleResult:
    prompt = upstream_prompt(source, conv)
    ids = _prompt_ids(prompt, tokenizer, has_image)
    return _mask_rounds(ids, prompt.split(conv.sep2), "[/INST] ", tokenizer, has_image, 1, 2, 0)


def oracle_mpt(source, tokenizer, conv, has_image=False) -> OracleResult:
    prompt = upstream_prompt(source, conv)
    ids = _prompt_ids(prompt, tokenizer, has_image)
    pieces = prompt.split(conv.sep)
    rounds = [conv.sep.join(pieces[:3])]  # system + user + assistant
    rounds += [conv.sep.join(pieces[start : start + 2]) for start in range(3, len(pieces), 2)]
    correction = 1 if (getattr(tokenizer, "legacy", False) and TOKENIZERS_AT_LEAST_0_14) else 0
    return _mask_rounds(ids, rounds, conv.sep + conv.roles[1], tokenizer, has_image, 0, 1, correction)


def oracle_plain(source, tokenizer, conv) -> OracleResult:
    assert len(source) == 2 and DEFAULT_IMAGE_TOKEN in source[0]["value"]
    prompt = DEFAULT_IMAGE_TOKEN + source[1]["value"] + conv.sep
    ids = tokenizer_image_token(prompt, tokenizer)
    prefix = len(tokenizer_image_token(DEFAULT_IMAGE_TOKEN, tokenizer))
    labels = [IGNORE_INDEX] * prefix + ids[prefix:]
    return OracleResult(ids, labels[: len(ids)], False)


def oracle_hash(source, tokenizer, conv, has_image=False) -> OracleResult:
    """The '###' path: each turn rendered as "### Role: text\\n", tokenised alone to get the cursor steps."""
    header = f"{conv.system}\n\n"
    names = {"human": conv.roles[0], "gpt": conv.roles[1]}
    pieces = [f"### {names.get(turn['from'].lower(), 'unknown')}: {turn['value']}\n" for turn in source]
    prompt = header + "".join(pieces) + "### "

    def length(text: str) -> int:
        if has_image:
            return len(tokenizer_image_token(text, tokenizer))
        ids = tokenizer(text, max_length=tokenizer.model_max_length, truncation=True).input_ids
        return sum(1 for token in ids if token != tokenizer.pad_token_id)

    ids = _prompt_ids(prompt, tokenizer, has_image)
    labels = list(ids)
    cursor = length(header)
    labels[:cursor] = [IGNORE_INDEX] * min(cursor, len(labels))
    for turn, piece in zip(source, pieces):
        piece_len = length(piece)
        if turn["from"] == "human":
            # Upstream leaves the first two tokens of every human turn unmasked.
            start, end = cursor + 2, min(cursor + piece_len, len(labels))
            labels[start:end] = [IGNORE_INDEX] * max(0, end - start)
        cursor += piece_len
    return OracleResult(ids, labels, False)


def oracle(source, tokenizer, conv, has_image=False) -> OracleResult:
    """Dispatch exactly like upstream's ``preprocess``."""
    if conv.sep_style == SeparatorStyle.PLAIN:
        return oracle_plain(source, tokenizer, conv)
    if conv.sep_style == SeparatorStyle.LLAMA_2:
        return oracle_llama_2(source, tokenizer, conv, has_image)
    if conv.version.startswith("v1"):
        return oracle_v1(source, tokenizer, conv, has_image)
    if conv.version == "mpt":
        return oracle_mpt(source, tokenizer, conv, has_image)
    return oracle_hash(source, tokenizer, conv, has_image)
