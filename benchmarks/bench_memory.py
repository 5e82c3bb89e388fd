"""Peak memory of a LoRA step against a 4-bit QLoRA step on a model of about 1B parameters (random weights, Llama
layout), each in a fresh process so that the peaks do not mix. On a GPU the figure is `torch.cuda.max_memory_allocated`
(bytes held by live tensors). On CPU it is the peak resident set size beyond the imports, measured twice:

- with glibc told to return freed memory at once (`MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` at 1 MiB): the
  resident size then follows the live tensors, as the GPU figure does; this row carries the target;
- with glibc's defaults: what `top` shows for a real run. glibc keeps freed blocks of up to 32 MiB for reuse, and the
  CPU 4-bit step frees many (bitsandbytes dequantizes every weight in forward and again in backward), so the
  difference between the two rows is memory the process holds but no tensor uses.

Both steps compute in bf16 where the hardware has it: on a GPU, and on CPUs with AVX512-BF16 or AMX-BF16. Other
CPUs emulate bf16 in software (the steps took minutes each), so there both load and compute in fp32, and the row's
label says so (`common.native_cpu_dtype`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import Row, dtype_label, native_cpu_dtype
from memory_worker import quantize

SHAPES = {
    "tiny": dict(hidden=256, intermediate=688, layers=2, heads=4, seq=32),
    "quick": dict(hidden=2048, intermediate=5632, layers=18, heads=16, seq=256),
    "full": dict(hidden=2048, intermediate=5632, layers=22, heads=32, seq=512),
}
WORKER = Path(__file__).resolve().parent / "memory_worker.py"
RETURN_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**20)}


def run(size: str, dtype: torch.dtype | None = None) -> list[Row]:
    """`dtype`: the weights' and compute dtype of both steps; default bf16 on a GPU or a CPU with bf16 in hardware,
    fp32 on other CPUs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava.utils import cpu_description

    reason = ""
    if dtype is None:
        dtype, reason = (torch.bfloat16, "") if torch.cuda.is_available() else native_cpu_dtype(cpu_description()[1])
    s = SHAPES[size]
    config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["heads"], vocab_size=32000,
                         tie_word_embeddings=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as quantized:
        with torch.device("meta"):
            count = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
        model.save_pretrained(tmp)
        del model
        quantize(tmp, quantized, dtype, "cuda" if torch.cuda.is_available() else "cpu")
        model_dirs = {"lora": tmp, "qlora": quantized}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        measures = {"live": RETURN_FREED_MEMORY} if torch.cuda.is_available() else {
            "live": RETURN_FREED_MEMORY, "rss": {}}  # fmt: skip
        peaks = {}
        for measure, allocator_env in measures.items():
            for mode in ("lora", "qlora"):
                command = [sys.executable, str(WORKER), model_dirs[mode], mode, str(s["seq"]),
                           str(dtype).removeprefix("torch.")]  # fmt: skip
                result = subprocess.run(command, capture_output=True, text=True, env={**env, **allocator_env},
                                        check=True, timeout=1800)  # fmt: skip
                shared, _, peak = map(int, result.stdout.strip().splitlines()[-1].split())
                peaks[measure, mode] = (peak - shared) / 2**30
    name = f"peak memory of a step, {count / 1e9:.2f}B params: QLoRA nf4 vs LoRA {dtype_label(dtype)}"
    if reason:
        name += f" ({reason})"
    if torch.cuda.is_available():
        return [
            Row(name, peaks["live", "qlora"], peaks["live", "lora"], "GiB", "<= 0.45x", note="max_memory_allocated")
        ]
    return [
        Row(name, peaks["live", "qlora"], peaks["live", "lora"], "GiB", "<= 0.45x",
            note="CPU RSS, freed memory returned"),
        Row(f"{name}, glibc malloc defaults", peaks["rss", "qlora"], peaks["rss", "lora"], "GiB", "",
            note=f"+{peaks['rss', 'qlora'] - peaks['live', 'qlora']:.2f} GiB kept free by malloc in QLoRA"),
    ]  # fmt: skip
