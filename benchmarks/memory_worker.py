"""Worker for bench_memory.py: one LoRA (bf16 weights) or 4-bit QLoRA training step in a fresh process, then the
step's peak memory. `python memory_worker.py MODEL_DIR lora|qlora SEQ_LEN` prints "<shared> <loaded> <peak>" in bytes (loaded: in use
before the step).

Both variants train as upstream's scripts do: gradient checkpointing on, LoRA r 16 on every linear, bf16 compute.
On a GPU the peak is `torch.cuda.max_memory_allocated` (shared: 0). On CPU it is the peak resident set size of the
step: Linux's counter is reset once the model is loaded (`/proc/self/clear_refs`), after freed loading buffers were
handed back to the OS (`malloc_trim`); the resident size of the imports, measured before the model is loaded, is
printed as the shared part for the caller to subtract."""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from llava.distributed.state import exit_process


def main() -> None:
    import bitsandbytes  # noqa: F401  (imported by both variants, so that it counts as shared)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import LlamaForCausalLM

    from llava.train.model_setup import quantization_kwargs

    model_dir, mode, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shared = 0 if cuda else _status_bytes("VmRSS")
    if mode == "lora":
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map={"": device})
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    else:  # the QLoRA path of llava.train (`--bits 4 --bf16 True`): nf4, double quantization, k-bit preparation
        model = LlamaForCausalLM.from_pretrained(
            model_dir, dtype=torch.bfloat16, **quantization_kwargs(training_flags(device))
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=r".*\.(self_attn|mlp)\.\w+_proj")
    model = get_peft_model(model, lora)
    if mode == "qlora":
        from llava.train.lora import cast_kbit_modules

        # As llava.train does after LoRA (and upstream): embeddings and head back to bf16, norms in fp32.
        cast_kbit_modules(model, training_flags(device))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, model.config.vocab_size, (1, seq_len), device=device)
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        _malloc_trim()
        reset = _reset_peak()
    loaded = torch.cuda.memory_allocated() if cuda else _status_bytes("VmRSS")
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(shared, loaded, peak)


def training_flags(device: str) -> SimpleNamespace:
    """The training arguments the QLoRA path reads: upstream's finetune_qlora.sh defaults (`--bits 4 --bf16 True`)."""
    return SimpleNamespace(bits=4, fp16=False, bf16=True, double_quant=True, quant_type="nf4", device=device)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size (VmHWM)
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _malloc_trim() -> None:
    """glibc keeps freed heap memory mapped; hand it back so that RSS shows what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


if __name__ == "__main__":
    main()
    exit_process()
