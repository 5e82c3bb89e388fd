"""Pointing a test at the offline Hugging Face cache that `llava.testing.hub.build_hub_cache` writes."""

from __future__ import annotations

from pathlib import Path

import pytest


def use_hub_cache(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    """HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE=1 for this process and its children.

    huggingface_hub reads these when it is imported, so its module constants (which transformers reads too) are
    patched as well; `monkeypatch` undoes everything.
    """
    import huggingface_hub.constants as hub_constants

    cache = str(Path(hf_home) / "hub")
    for name, value in (("HF_HOME", str(hf_home)), ("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
