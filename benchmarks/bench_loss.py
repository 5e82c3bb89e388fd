"""The training loss without the full logits (`llava.model.loss`): a LoRA step of our `LlavaLlamaForCausalLM` at
vocabulary 32000, 4 rows of 2048 tokens (an image of 576 features in each), chunked loss (training's default)
against the unchunked one (`skip_logits=False`: transformers' logits, their fp32 copy and their gradient).

Both steps train LoRA r 16 on every linear of the language model with gradient checkpointing, as upstream's
scripts do, on a narrow language model (hidden 128, 2 layers): the loss's share of the step is then larger than at
7B (where the layers dwarf the head's matrix products), which makes the time ratio a strict test of the chunked
loss's overhead, while the logits' memory (tokens x vocab, independent of the model) is the same as at any size.

- Peak memory: each variant in a fresh process (`python bench_loss.py MODE SIZE DTYPE`), the peak resident set
  size of one step after a warm-up step, with glibc returning freed memory at once (`bench_memory`'s method; on a GPU,
  `torch.cuda.max_memory_allocated`). Target <= 0.5x.
- Step time: both variants in one process, alternating, best of 2 (on CPU: CPU seconds on one thread,
  `common.paired_cpu_seconds`; the machine is shared). Target <= 1.05x.

Compute is bf16 where the CPU has it in hardware, fp32 otherwise (`common.native_cpu_dtype`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHAPES = {
    "tiny": dict(hidden=64, layers=2, intermediate=192, heads=4, vocab=1000, batch=2, length=64, image=28, repeat=1),
    "quick": dict(hidden=128, layers=2, intermediate=344, heads=4, vocab=32000, batch=4, length=2048, image=336,
                  repeat=2),
    "full": dict(hidden=512, layers=4, intermediate=1376, heads=8, vocab=32000, batch=4, length=2048, image=336,
                 repeat=3),
}  # fmt: skip
MODES = ("chunked", "unchunked")


def build(s: dict, root: Path, device: str, dtype: torch.dtype):
    """Our LLaVA model with a small frozen CLIP tower, LoRA r 16 on every linear, the projector trained, gradient
    checkpointing; plus one batch of `batch` rows spliced to `length` tokens."""
    from bench_step import _clip_dir
    from peft import LoraConfig, get_peft_model

    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    torch.manual_seed(0)
    clip = _clip_dir(root / "clip", s["image"])
    config = LlavaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], intermediate_size=s["intermediate"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["heads"], vocab_size=s["vocab"],
                         max_position_embeddings=4096, mm_vision_tower=str(clip), mm_hidden_size=64,
                         mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_patch_merge_type="flat",
                         tokenizer_model_max_length=s["length"], use_cache=False)  # fmt: skip
    model = LlavaLlamaForCausalLM(config).to(device=device, dtype=dtype)
    tower = model.get_vision_tower()
    tower.load_model()
    tower.to(device=device, dtype=dtype)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                      target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj")  # fmt: skip
    model = get_peft_model(model, lora)
    for param in model.get_base_model().get_model().mm_projector.parameters():
        param.requires_grad = True
    text = s["length"] - tower.num_patches + 1
    ids = torch.randint(3, s["vocab"], (s["batch"], text))
    ids[:, 5] = IMAGE_TOKEN_INDEX
    labels = torch.where(torch.arange(text) < text // 4, IGNORE_INDEX, ids)  # a masked prompt, as in LLaVA's data
    labels[:, 5] = IGNORE_INDEX
    inputs = dict(input_ids=ids.to(device), labels=labels.to(device),
                  images=torch.randn(s["batch"], 3, s["image"], s["image"], device=device, dtype=dtype))  # fmt: skip
    return model.train(), inputs


def stepper(model, inputs: dict, mode: str, device: str, dtype: torch.dtype):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    count = inputs["labels"][:, 1:].ne(-100).sum()
    skip_logits = None if mode == "chunked" else False  # None: training's default, the chunked loss

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(**inputs, num_items_in_batch=count, skip_logits=skip_logits).loss
        loss.backward()
        optimizer.step()

    return step


def _dtype_and_reason() -> tuple[torch.dtype, str]:
    from common import native_cpu_dtype

    from llava.utils import cpu_description

    if torch.cuda.is_available():
        return torch.bfloat16, ""
    return native_cpu_dtype(cpu_description()[1])


def run(size: str) -> list:
    from bench_memory import RETURN_FREED_MEMORY
    from common import Row, dtype_label, paired_cpu_seconds, paired_seconds

    s = SHAPES[size]
    dtype, reason = _dtype_and_reason()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = {**os.environ, **RETURN_FREED_MEMORY,
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    peaks = {}
    for mode in MODES:
        command = [sys.executable, str(Path(__file__).resolve()), mode, size, str(dtype).removeprefix("torch.")]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=1800)
        shared, peak = map(int, result.stdout.strip().splitlines()[-1].split())
        peaks[mode] = (peak - shared) / 2**30
    with tempfile.TemporaryDirectory() as tmp:
        model, inputs = build(s, Path(tmp), device, dtype)
        pair = paired_seconds if device == "cuda" else paired_cpu_seconds
        chunked_s, unchunked_s = pair(
            stepper(model, inputs, "chunked", device, dtype), stepper(model, inputs, "unchunked", device, dtype),
            repeat=s["repeat"],
        )  # fmt: skip
    shape = f"vocab {s['vocab']}, {s['batch']} x {s['length']} tokens, H{s['hidden']}, {dtype_label(dtype)}"
    if reason:
        shape += f", {reason}"
    how = "max_memory_allocated" if device == "cuda" else "CPU RSS, freed memory returned"
    return [
        Row(f"loss: peak memory of a LoRA step, chunked vs unchunked ({shape})", peaks["chunked"],
            peaks["unchunked"], "GiB", "<= 0.5x", note=how),
        Row(f"loss: LoRA step time, chunked vs unchunked ({shape})", chunked_s * 1e3, unchunked_s * 1e3, "ms",
            "<= 1.05x", note="best of alternating steps" + ("" if device == "cuda" else ", 1 thread, CPU time")),
    ]  # fmt: skip


def _worker(mode: str, size: str, dtype_name: str) -> None:
    """One warm-up step, then the peak memory of the next: prints "<shared> <peak>" in bytes."""
    from memory_worker import _status_bytes, peak_since, start_peak

    dtype = getattr(torch, dtype_name)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shared = 0 if cuda else _status_bytes("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        model, inputs = build(SHAPES[size], Path(tmp), device, dtype)
    step = stepper(model, inputs, mode, device, dtype)
    step()  # the optimizer's state exists from here on, as in every step of a run
    reset = start_peak(cuda)
    step()
    print(shared, peak_since(cuda, reset))


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
