"""Peak memory of a LoRA step against a 4-bit QLoRA step on a model of about 1B parameters (random weights, Llama
layout), each in a fresh process so that the peaks do not mix. Peak RSS on CPU (the whole process, imports
included); `torch.cuda.max_memory_allocated` would be the GPU figure."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import Row

SHAPES = {
    "tiny": dict(hidden=256, intermediate=688, layers=2, heads=4, seq=32),
    "quick": dict(hidden=2048, intermediate=5632, layers=18, heads=16, seq=256),
    "full": dict(hidden=2048, intermediate=5632, layers=22, heads=32, seq=512),
}
WORKER = Path(__file__).resolve().parent / "memory_worker.py"


def run(size: str) -> list[Row]:
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[size]
    config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["heads"], vocab_size=32000,
                         tie_word_embeddings=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        with torch.device("meta"):
            count = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(tmp)
        del model
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        peaks = {}
        for mode in ("lora", "qlora"):
            result = subprocess.run([sys.executable, str(WORKER), tmp, mode, str(s["seq"])], capture_output=True,
                                    text=True, env=env, check=True, timeout=1800)  # fmt: skip
            shared, _, peak = map(int, result.stdout.strip().splitlines()[-1].split())
            peaks[mode] = (peak - shared,)
    return [
        Row(f"peak memory of a step, {count / 1e9:.2f}B params: QLoRA nf4 vs LoRA bf16", peaks["qlora"][0] / 2**30,
            peaks["lora"][0] / 2**30, "GiB", "<= 0.45x",
            note="resident memory beyond the imports"),
    ]  # fmt: skip
