"""Writing the tiny builds byte for byte the same, and telling two builds apart."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def tree_digest(root: str | Path) -> str:
    """SHA-256 over every file's relative path and bytes: equal digests mean byte-identical builds."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_json(path: Path, obj) -> None:
    """Sorted keys and a final newline, so that the same content is the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
