"""Peak memory of scripts/convert_to_hf.py: the export streams each tensor into its shard (cast to --dtype as it is
written), so beyond the model it loads it holds one tensor at a time, never a second copy of the model.

A LLaVA of about 170M parameters (Llama layout, 32000-row vocabulary, random weights, saved in float32 as a full
fine-tune) is exported to float16 in a fresh process (`export_worker.py`); the row is the peak resident set size
beyond the imports, against the bytes of the model as loaded (its own float32). Two copies would be 1.5x (model +
a float16 copy) or more; the target leaves room for the loader's and the allocator's slack. Beyond the model the
export holds one tensor (plus the loader's slack), so at 13B the peak is the model as loaded plus its largest
tensor: a release (float16, 13.4B parameters with the tower) loads in 26.7 GB, mapped from its files; a LoRA run
is merged in float32 first (as scripts/merge_lora_weights.py), 53.4 GB. The resident size counts the checkpoint's
file pages that the loader maps (clean page cache, which the kernel can drop), as `top` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import Row

SHAPES = {
    "tiny": dict(hidden=64, intermediate=172, layers=2, heads=4, vocab=1024),
    "quick": dict(hidden=1024, intermediate=2816, layers=8, heads=16, vocab=32000),
    "full": dict(hidden=2048, intermediate=5632, layers=16, heads=16, vocab=32000),
}
WORKER = Path(__file__).resolve().parent / "export_worker.py"


def build_model(tiny, shape: dict, out_dir: Path) -> int:
    """A full LLaVA checkpoint of ``shape`` over the tiny CLIP tower and tokenizer; returns its parameter count."""
    import json

    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    base = json.loads((Path(tiny.llava) / "config.json").read_text())
    mm_fields = {key: value for key, value in base.items() if key.startswith(("mm_", "image_", "tokenizer_"))}
    config = LlavaConfig(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["heads"], vocab_size=shape["vocab"], **mm_fields)  # fmt: skip
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM._from_config(config, dtype=torch.float32)
    model.config.dtype = torch.float32
    model.save_pretrained(out_dir)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(Path(tiny.llava) / name, out_dir / name)
    return sum(parameter.numel() for parameter in model.parameters())


def run(size: str, tiny) -> list[Row]:
    shape = SHAPES[size]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "llava-v1.5-shaped"
        count = build_model(tiny, shape, source)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        result = subprocess.run([sys.executable, str(WORKER), str(source), str(Path(tmp) / "hf"), "float16"],
                                capture_output=True, text=True, env=env, check=True, timeout=1800)  # fmt: skip
        shared, loaded_bytes, peak = map(int, result.stdout.strip().splitlines()[-1].split())
    extra = (peak - shared) / 2**30
    model = loaded_bytes / 2**30
    largest = shape["vocab"] * shape["hidden"] * 2 / 2**30  # the float16 embedding, the largest tensor written
    name = f"export peak memory beyond imports, {count / 1e6:.0f}M params fp32 -> fp16, vs the loaded model"
    if size == "tiny":  # a 1 MB model: the figure is the interpreter's noise
        return [Row(name, extra, model, "GiB", "", note="tiny: smoke test only")]
    overhead_gb = (extra - model - largest) * 2**30 / 1e9
    note = (f"beyond the model {extra - model:.3f} GiB: its largest tensor {largest:.3f} + {overhead_gb:.3f} GB "
            f"more; 13B (largest tensor 0.33 GB): release ~{26.7 + 0.33 + overhead_gb:.1f} GB, LoRA run "
            f"~{53.4 + 0.33 + overhead_gb:.1f} GB")  # fmt: skip
    return [Row(name, extra, model, "GiB", "<= 1.3x", note=note)]
