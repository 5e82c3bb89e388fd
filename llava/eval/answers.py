"""The answers file of upstream's generation entry points, as its scorers and submission converters read it.

One JSON line per question (per round for MMBench ``--all-rounds``) with upstream's keys in upstream's order:
``question_id``, ``prompt`` (the question as recorded, without the image token or the template), ``text`` (the
answer), ``answer_id`` (a fresh short uuid), ``model_id`` (the model's name from its path) and ``metadata`` (``{}``).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

ANSWER_KEYS = ("question_id", "prompt", "text", "answer_id", "model_id", "metadata")
# shortuuid's alphabet (no 0/1/I/O/l) and length: answer ids look like upstream's without the extra dependency.
SHORT_UUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SHORT_UUID_LENGTH = 22


def short_uuid() -> str:
    """A random 22-character id in shortuuid's alphabet (upstream's ``shortuuid.uuid()``)."""
    value = uuid.uuid4().int
    characters = []
    for _ in range(SHORT_UUID_LENGTH):
        value, digit = divmod(value, len(SHORT_UUID_ALPHABET))
        characters.append(SHORT_UUID_ALPHABET[digit])
    return "".join(characters)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every non-empty line of a JSONL file; a line that is not JSON is an error naming the file and line."""
    records = []
    with open(os.path.expanduser(path), encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not a JSON object ({error}); fix or remove the line"
                ) from None
    return records


def read_answer_texts(path: str | os.PathLike[str]) -> tuple[dict[Any, str], int]:
    """``{question_id: text}`` of an answers file and the number of lines that are not JSON (skipped, as upstream's
    submission converters skip them; a later answer to the same question wins)."""
    answers, errors = {}, 0
    with open(os.path.expanduser(path), encoding="utf-8") as file:
        for line in file:
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                errors += 1
                continue
            answers[answer["question_id"]] = answer["text"]
    return answers, errors


class AnswersFile:
    """The answers file, created (with its folder) and truncated on open; one flushed line per answer."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(os.path.expanduser(path))

    def __enter__(self) -> AnswersFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        return self

    def write(self, line: dict[str, Any]) -> None:
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def __exit__(self, *exc_info) -> None:
        self._file.close()
