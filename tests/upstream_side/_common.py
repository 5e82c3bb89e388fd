"""Shared by the scripts that run inside upstream's reference environment (never imported by our own tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def upstream_llava():
    """Import upstream's ``llava`` and make sure it is upstream's (installed), not this repository's."""
    import llava

    location = Path(llava.__file__).resolve()
    if "site-packages" not in location.parts:
        raise SystemExit(f"expected upstream's installed llava, imported {location}")
    return llava


def main(handler) -> None:
    """``script.py request.json answer.json``: answer = handler(request)."""
    request_path, answer_path = sys.argv[1], sys.argv[2]
    request = json.loads(Path(request_path).read_text())
    answer = handler(request)
    Path(answer_path).write_text(json.dumps(answer))


def versions() -> dict:
    import peft
    import tokenizers
    import torch
    import transformers

    return dict(
        torch=torch.__version__,
        transformers=transformers.__version__,
        tokenizers=tokenizers.__version__,
        peft=peft.__version__,
    )
