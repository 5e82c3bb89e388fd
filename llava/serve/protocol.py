"""Upstream's worker protocol: the stream of NUL-delimited JSON chunks ``{"text", "error_code"}``.

A worker streams the prompt followed by the answer so far in every chunk (clients cut the prompt off); a chunk
with ``error_code`` other than 0 is the last one and its ``text`` says what went wrong.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from typing import Any

DELIMITER = b"\0"


class ErrorCode(enum.IntEnum):
    """Upstream's codes: 1 from the worker (bad input here too), 2 no worker for the model, 3 worker unreachable."""

    OK = 0
    WORKER = 1
    NO_WORKER = 2
    WORKER_UNREACHABLE = 3


def chunk(text: str, error_code: int = ErrorCode.OK) -> bytes:
    return json.dumps({"text": text, "error_code": int(error_code)}).encode() + DELIMITER


def split_chunks(pieces: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Parse a streamed reply (bytes in any pieces) into its JSON chunks."""
    pending = b""
    for piece in pieces:
        pending += piece
        *complete, pending = pending.split(DELIMITER)
        for raw in complete:
            if raw:
                yield json.loads(raw.decode("utf-8"))
    if pending:
        yield json.loads(pending.decode("utf-8"))
