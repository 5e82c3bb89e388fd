"""Shared fixtures: the tiny offline models and data built by `llava.tiny` (once per test session)."""

from __future__ import annotations

import os

import pytest

# Keep the 2-core CI machine responsive when several torch processes run at once.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of the tiny CLIP tower, Vicuna-like LM, LLaVA checkpoint, pretrained projector and dataset."""
    from llava.tiny import build_all

    return build_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_tokenizer(tiny):
    """A fresh tokenizer per test (tests may add tokens or change padding)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.llm)


@pytest.fixture
def tiny_image_processor(tiny):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(tiny.vision_tower)
