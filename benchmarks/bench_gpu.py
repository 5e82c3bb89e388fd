"""On a GPU: tokens/s, peak memory and the achieved fraction of the GPU's bf16 peak for a 7B-shaped LLaVA LoRA step
(random weights, batch 16 x 2048 tokens incl. 576 image tokens per sample, LoRA r 128 on every linear, gradient
checkpointing as upstream's scripts, flash-attention-2 when installed, else SDPA). Skipped without a GPU.

FLOPs per token for a LoRA step with gradient checkpointing: forward 2N, recomputed forward 2N, backward to the
inputs 2N (frozen weights get no weight gradients) = 6N for N language-model parameters, plus attention."""

from __future__ import annotations

import importlib.util

import torch

from common import Row, seconds, skipped

# Dense bf16 peak of an H100/H200 SXM (no sparsity), in FLOP/s. Other GPUs: adjust.
GPU_BF16_PEAK_FLOPS = 989e12
SHAPE = dict(hidden=4096, intermediate=11008, layers=32, heads=32, vocab=32000, batch=16, seq=2048, image_tokens=576)


def run(size: str) -> list[Row]:
    if not torch.cuda.is_available():
        return [skipped("7B LLaVA LoRA step on GPU", "no GPU on this machine")]
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    s = dict(SHAPE, layers=32 if size == "full" else 8)
    attention = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["heads"], vocab_size=s["vocab"],
                         max_position_embeddings=4096)  # fmt: skip
    model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation=attention).cuda()
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=128, lora_alpha=256, target_modules=r".*\.(self_attn|mlp)\.\w+_proj"))
    model.train()
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    embeds = torch.randn(s["batch"], s["seq"], s["hidden"], device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(3, s["vocab"], (s["batch"], s["seq"]), device="cuda")

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(inputs_embeds=embeds, labels=labels).loss.backward()
        optimizer.step()

    torch.cuda.reset_peak_memory_stats()
    elapsed = seconds(step, repeat=3)
    tokens = s["batch"] * s["seq"]
    attention_flops = 3 * 4 * s["layers"] * s["seq"] * s["hidden"] * tokens  # QK^T and AV, fwd + recompute + bwd
    achieved = (6 * params * tokens + attention_flops) / elapsed
    return [
        Row(f"LoRA step on GPU, {s['layers']} 7B-shaped layers ({attention}): achieved vs bf16 peak",
            achieved / 1e12, GPU_BF16_PEAK_FLOPS / 1e12, "TFLOP/s", "",
            note=f"{tokens / elapsed:.0f} tokens/s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"),
    ]  # fmt: skip
