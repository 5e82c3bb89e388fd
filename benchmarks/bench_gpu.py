"""On a GPU (`python benchmarks/run.py --gpu`): a LoRA training step of our `LlavaLlamaForCausalLM` at LLaVA-1.5-7B
shapes with random weights: Vicuna-7B-shaped language model (hidden 4096, 32 layers), a CLIP ViT-L/14-336-shaped
tower (24 layers, 576 patches, frozen) and the mlp2x_gelu projector; LoRA r 128 on every linear of the language
model, projector trained, gradient checkpointing, bf16, flash-attention-2 when installed, else SDPA, as
`scripts/finetune_lora.sh`. Batches of 16 samples from the length mix of `bench_packing` (LLaVA-1.5's 665k shape),
padded against `--packing`: non-padding tokens/s, peak memory and MFU against the device's dense bf16 peak.

MFU counts useful work only (real tokens, not padding): 6 N FLOPs per token for the N language-model parameters
(forward 2N, recomputed forward 2N, backward to the inputs 2N: frozen weights get no weight gradients), attention
12 * layers * hidden * len^2 per sample (QK^T and AV, forward + recompute + backward), and the tower's forward, 2 N_tower
per patch. Sized to finish in under 4 minutes on one H100/H200 (--quick: 8 of the 32 layers).

The padded batch is also stepped with transformers' unchunked loss (`skip_logits=False`: the full logits, their fp32
copy and gradient), against training's chunked one (`llava.model.loss`): step time and peak memory.

`run(size, dry_run=True)` runs the same code on CPU at tiny shapes (the test suite does), so that the first GPU run
does not crash.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from common import Row, skipped

# Dense bf16 peaks (no sparsity), FLOP/s, by a substring of the device name; other GPUs: add theirs.
BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
UNKNOWN_PEAK = 989e12
SHAPES = {
    "gpu": dict(hidden=4096, intermediate=11008, layers=32, heads=32, vocab=32000, tower_hidden=1024,
                tower_intermediate=4096, tower_layers=24, tower_heads=16, image=336, patch=14, batch=16,
                max_len=2048, lora_r=128, steps=3),
    "dry_run": dict(hidden=64, intermediate=172, layers=2, heads=4, vocab=1000, tower_hidden=32,
                    tower_intermediate=64, tower_layers=2, tower_heads=2, image=56, patch=14, batch=4,
                    max_len=256, lora_r=4, steps=1),
}  # fmt: skip
LENGTH_MIX = {
    "gpu": dict(image_text=(100, 1500), text_only=(600, 2048)),
    "dry_run": dict(image_text=(20, 150), text_only=(60, 256)),
}


def _peak_flops(device_name: str) -> tuple[float, str]:
    for key, flops in BF16_PEAK_FLOPS.items():
        if key in device_name:
            return flops, key
    return UNKNOWN_PEAK, "unknown GPU, H100 peak assumed"


def _build(s: dict, root: Path, device: str, dtype: torch.dtype, attention: str):
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    tower_dir = root / "clip-l-336-shaped"
    tower_config = CLIPVisionConfig(hidden_size=s["tower_hidden"], intermediate_size=s["tower_intermediate"],
                                    num_hidden_layers=s["tower_layers"], num_attention_heads=s["tower_heads"],
                                    image_size=s["image"], patch_size=s["patch"], hidden_act="quick_gelu")  # fmt: skip
    with torch.device(device):
        CLIPVisionModel(tower_config).to(dtype).save_pretrained(tower_dir)
    crop = {"height": s["image"], "width": s["image"]}
    CLIPImageProcessorPil(size={"shortest_edge": s["image"]}, crop_size=crop).save_pretrained(tower_dir)
    config = LlavaConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["heads"], vocab_size=s["vocab"],
                         max_position_embeddings=4096, mm_vision_tower=str(tower_dir), mm_hidden_size=s["tower_hidden"],
                         mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_patch_merge_type="flat",
                         tokenizer_model_max_length=s["max_len"], use_cache=False)  # fmt: skip
    with torch.device(device):
        model = LlavaLlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=attention)
    vision_tower = model.get_vision_tower()
    vision_tower.load_model()
    vision_tower.to(device=device, dtype=dtype)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    lora = LoraConfig(r=s["lora_r"], lora_alpha=2 * s["lora_r"], lora_dropout=0.05,
                      target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj")  # fmt: skip
    model = get_peft_model(model, lora)
    for param in model.base_model.model.get_model().mm_projector.parameters():
        param.requires_grad = True
    tower_params = sum(p.numel() for p in vision_tower.parameters())
    lm_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "vision_tower" not in n)
    return model.train(), lm_params, tower_params


def run(size: str, dry_run: bool = False) -> list[Row]:
    import bench_packing

    from llava.data.dataset import DataCollatorForSupervisedDataset
    from llava.data.packing import PACKING_STATS_KEY, PackingConfig, packing_attention_cost
    from llava.model.attention import select_attn_implementation
    from llava.model.llava_arch import image_feature_length

    if not dry_run and not torch.cuda.is_available():
        return [skipped("7B LLaVA LoRA step on GPU", "no GPU on this machine")]
    s = dict(SHAPES["dry_run" if dry_run else "gpu"])
    if not dry_run and size != "full":
        s["layers"] = 8  # --quick / --tiny on a GPU: a quarter of the model, same per-layer shapes
    device, dtype = ("cpu", torch.float32) if dry_run else ("cuda", torch.bfloat16)
    attention = "sdpa" if dry_run else select_attn_implementation()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, lm_params, tower_params = _build(s, Path(tmp), device, dtype, attention)
    features = image_feature_length(model.base_model.model)
    tokenizer = SimpleNamespace(pad_token_id=0, model_max_length=s["max_len"])
    padded = DataCollatorForSupervisedDataset(tokenizer)
    # The dry run packs as flash-attention would (no row-width cost): at its tiny width SDPA's cost model would keep
    # one sample per row, and the packed path would go untested.
    cost = 0.0 if dry_run else packing_attention_cost(s["hidden"], attention)
    packed = DataCollatorForSupervisedDataset(
        tokenizer, PackingConfig(image_feature_length=features, attention_cost=cost)
    )

    # One image batch of the 665k-shaped mix (text-only batches are 6% of batches).
    mix_shape = {**s, **LENGTH_MIX["dry_run" if dry_run else "gpu"]}
    mix = [
        sample for sample in bench_packing.length_mix(8 * s["batch"], mix_shape, np.random.default_rng(0)) if sample[0]
    ]
    image = torch.randn(3, s["image"], s["image"])
    generator = torch.Generator().manual_seed(0)
    samples = [bench_packing._item(*sample, mix_shape, image, generator) for sample in mix[: s["batch"]]]
    lengths = [min(len(item["input_ids"]) - 1 + features, s["max_len"]) for item in samples]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def to_device(batch: dict) -> dict:
        inputs = {key: value for key, value in batch.items() if key != PACKING_STATS_KEY}
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}

    def step(inputs: dict, skip_logits=None) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=dtype, enabled=not dry_run):
            loss = model(**{**inputs, "images": inputs["images"].to(dtype)}, skip_logits=skip_logits).loss
        loss.backward()
        optimizer.step()

    def synchronize() -> None:
        if not dry_run:
            torch.cuda.synchronize()

    results = {}
    # skip_logits None: training's chunked loss (llava.model.loss); False: transformers' full logits, as before it.
    layouts = (("padded", padded, None), ("packed", packed, None), ("padded, unchunked loss", padded, False))
    for name, collator, skip_logits in layouts:
        inputs = to_device(collator(samples))
        if not dry_run:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step(inputs, skip_logits)  # warm-up
        synchronize()
        start = time.perf_counter()
        for _ in range(s["steps"]):
            step(inputs, skip_logits)
        synchronize()
        seconds = (time.perf_counter() - start) / s["steps"]
        peak = torch.cuda.max_memory_allocated() / 2**30 if not dry_run else 0.0
        results[name] = (seconds, peak, tuple(inputs["input_ids"].shape))

    tokens = sum(lengths)
    useful = (6 * lm_params * tokens + 12 * s["layers"] * s["hidden"] * sum(n * n for n in lengths)
              + 2 * tower_params * (features + 1) * len(samples))  # fmt: skip
    device_name = "cpu (dry run)" if dry_run else torch.cuda.get_device_name(0)
    peak_flops, peak_name = _peak_flops(device_name)
    label = f"7B LLaVA LoRA step, {s['layers']} layers, {attention}, {device_name}"
    rows = [
        Row(f"{label}: non-padding tokens/s, packed vs padded", tokens / results["packed"][0],
            tokens / results["padded"][0], "tok/s", "",
            note=f"rows {results['packed'][2]} vs {results['padded'][2]}"),
    ]  # fmt: skip
    for name in ("padded", "packed"):
        seconds, peak, _ = results[name]
        rows.append(
            Row(f"{label}, {name}: MFU vs bf16 peak ({peak_name})", useful / seconds / 1e12, peak_flops / 1e12,
                "TFLOP/s", "", note=f"{tokens / seconds:.0f} tokens/s, peak memory {peak:.1f} GiB")
        )  # fmt: skip
    (chunked_s, chunked_peak, _), (unchunked_s, unchunked_peak, _) = (
        results["padded"],
        results["padded, unchunked loss"],
    )
    rows.append(Row(f"{label}, padded: loss step time, chunked vs unchunked", chunked_s * 1e3, unchunked_s * 1e3, "ms",
                    "<= 1.05x"))  # fmt: skip
    if not dry_run:
        rows.append(Row(f"{label}, padded: loss peak memory, chunked vs unchunked", chunked_peak, unchunked_peak,
                        "GiB", "", note="whole step: weights, activations, optimizer"))  # fmt: skip
    return rows
