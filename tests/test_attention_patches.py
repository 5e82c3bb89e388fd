"""Upstream's attention monkey-patch modules and train_xformers.py: transformers' own attention instead of a patch,
said once; `python llava/train/train_xformers.py` trains with it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import flags
from transformers.models.llama import modeling_llama

from llava.model import attention
from llava.train.llama_flash_attn_monkey_patch import replace_llama_attn_with_flash_attn
from llava.train.llama_xformers_attn_monkey_patch import replace_llama_attn_with_xformers_attn

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_patches_choose_transformers_attention_and_say_so_once(caplog, monkeypatch):
    monkeypatch.setattr(attention.torch.cuda, "is_available", lambda: False)
    attention._say_once.cache_clear()
    forward, prepare = modeling_llama.LlamaAttention.forward, modeling_llama.LlamaModel.forward
    with caplog.at_level(logging.WARNING, logger="llava.model.attention"):
        assert replace_llama_attn_with_xformers_attn() == "sdpa"
        assert replace_llama_attn_with_xformers_attn() == "sdpa"
        assert replace_llama_attn_with_flash_attn() == "sdpa"  # no GPU here: flash-attention-2 cannot run
    said = [record.getMessage() for record in caplog.records if "attention patch is not applied" in record.getMessage()]
    assert said == [
        "upstream's xformers attention patch is not applied: transformers' own sdpa attention is used instead",
        "upstream's flash-attention attention patch is not applied: transformers' own sdpa attention is used instead",
    ]
    assert modeling_llama.LlamaAttention.forward is forward and modeling_llama.LlamaModel.forward is prepare


@pytest.mark.dist
def test_train_xformers_py_trains_with_sdpa(tiny, tmp_path):
    data = tmp_path / "text.json"
    data.write_text(json.dumps([{"id": "1", "conversations": [{"from": "human", "value": "Hi"},
                                                               {"from": "gpt", "value": "Hello."}]}]))  # fmt: skip
    out = tmp_path / "out"
    argv = flags(model_name_or_path=tiny.llm, version="v1", data_path=data, output_dir=out, max_steps=1,
                 save_strategy="no", report_to="none", per_device_train_batch_size=1)  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "llava" / "train" / "train_xformers.py"), *argv], capture_output=True,
        text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers' own sdpa attention is used instead" in result.stderr
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
