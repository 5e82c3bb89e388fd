"""Worker for bench_memory.py: one LoRA (16- or 32-bit weights) or 4-bit QLoRA training step in a fresh process,
then the step's peak memory. `python memory_worker.py MODEL_DIR lora|qlora SEQ_LEN bfloat16|float32` prints
"<shared> <loaded> <peak>" in bytes (loaded: in use before the step). For qlora, MODEL_DIR holds the model already
quantized the way llava.train quantizes it (`quantize`, run once by the caller): bitsandbytes' CPU quantization
of 1B parameters takes 20-30 s, and the two QLoRA runs would each pay it before the part that is measured.

Both variants train as upstream's scripts do: gradient checkpointing on, LoRA r 16 on every linear, bf16 compute
(`--bf16 True`); with float32 (CPUs without bf16 in hardware) weights and compute are fp32, as without `--bf16`.
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

    model_dir, mode, seq_len, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), getattr(torch, sys.argv[4])
    bf16 = dtype == torch.bfloat16
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shared = 0 if cuda else _status_bytes("VmRSS")
    if mode == "lora":
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map={"": device})
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    else:  # the QLoRA path of llava.train (`--bits 4 --bf16 True`): nf4, double quantization, k-bit preparation
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map={"": device})
        _own_memory(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=r".*\.(self_attn|mlp)\.\w+_proj")
    model = get_peft_model(model, lora)
    if mode == "qlora":
        from llava.train.lora import cast_kbit_modules

        # As llava.train does after LoRA (and upstream): embeddings and head back to bf16 (with bf16), norms in fp32.
        cast_kbit_modules(model, training_flags(device, bf16))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, model.config.vocab_size, (1, seq_len), device=device)
    reset = start_peak(cuda)
    loaded = torch.cuda.memory_allocated() if cuda else _status_bytes("VmRSS")
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    peak = peak_since(cuda, reset)
    print(shared, loaded, peak)


def start_peak(cuda: bool) -> bool:
    """Start measuring a peak from here (freed memory handed back first); False when the CPU counter could not be
    reset (then `peak_since` falls back to the process's lifetime peak)."""
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return True
    _malloc_trim()
    return _reset_peak()


def peak_since(cuda: bool, reset: bool) -> int:
    """Bytes at the peak since `start_peak`: live tensors on a GPU, the resident set size on CPU."""
    if cuda:
        return torch.cuda.max_memory_allocated()
    return _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _own_memory(model) -> None:
    """Move tensors still backed by the checkpoint file (safetensors maps it) into memory of their own, as freshly
    quantized weights are: file pages would be counted in the resident size only once the step touches them."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
        for module in model.modules():
            state = getattr(getattr(module, "weight", None), "quant_state", None)
            for holder in (state, getattr(state, "state2", None)):
                for field in ("absmax", "code", "offset"):
                    value = getattr(holder, field, None)
                    if isinstance(value, torch.Tensor):
                        setattr(holder, field, value.clone())


def quantize(model_dir: str, out_dir: str, dtype: torch.dtype, device: str) -> None:
    """Save the model of `model_dir` as llava.train loads it with `--bits 4` (nf4, double quantization)."""
    from transformers import LlamaForCausalLM

    from llava.train.model_setup import quantization_kwargs

    flags = training_flags(device, dtype == torch.bfloat16)
    LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, **quantization_kwargs(flags)).save_pretrained(out_dir)


def training_flags(device: str, bf16: bool) -> SimpleNamespace:
    """The training arguments the QLoRA path reads: upstream's finetune_qlora.sh defaults (`--bits 4 --bf16 True`),
    or the same without `--bf16` (fp32)."""
    return SimpleNamespace(bits=4, fp16=False, bf16=bf16, double_quant=True, quant_type="nf4", device=device)


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
