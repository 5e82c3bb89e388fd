"""Reading LLaVA training data files: a JSON list of records, or JSON Lines (one record per line)."""

from __future__ import annotations

import json
import os
from pathlib import Path


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
