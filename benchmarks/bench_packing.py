"""Packing: non-padding tokens per second of a LoRA training step (forward, backward, AdamW) of our
`LlavaLlamaForCausalLM`, with `--packing` against padded batches, both drawn by `--group_by_modality_length`'s
sampler from the same samples.

The length mix is shaped like LLaVA-1.5's 665k mixture: 94% image samples, 576 image features plus text of median
100 tokens (log-normal, tail to 1500); 6% text-only samples of median 600 tokens (tail to 2048); rows of 2048
tokens (`--model_max_length`). Tokens are counted after the splice. The timed batches are image batches and one
text-only batch, weighted by the share of such batches in the sampler's order.

The model is small enough for a CPU (a 1-layer LM of width 512, a 2-layer CLIP-shaped tower with 576 patches at
336 px; SDPA; no gradient checkpointing): at this width attention is a larger share of a step than at 7B (about 15%
against 8% at 1-2k tokens), and SDPA's packed mask costs a whole row squared where flash-attention's varlen kernel
costs each sample's square; so the CPU figure understates what packing gives at 7B. Steps are timed in CPU seconds
on one thread (see `step`). The batch is LLaVA-1.5's (16 per device); rows are chosen by the collator's cost model
for SDPA at this width (`packing_attention_cost`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from common import Row

logger = logging.getLogger("bench_packing")

SHAPES = {
    "tiny": dict(hidden=64, layers=1, intermediate=172, heads=4, vocab=1000, batch=4, image=56, max_len=256,
                 image_text=(10, 150), text_only=(60, 256), image_batches=1, samples=64),
    "quick": dict(hidden=512, layers=1, intermediate=1376, heads=8, vocab=2000, batch=16, image=336, max_len=2048,
                  image_text=(100, 1500), text_only=(600, 2048), image_batches=4, samples=1024),
    "full": dict(hidden=1024, layers=4, intermediate=2752, heads=16, vocab=32000, batch=16, image=336, max_len=2048,
                 image_text=(100, 1500), text_only=(600, 2048), image_batches=4, samples=2048),
}  # fmt: skip
TEXT_ONLY_SHARE = 0.06
REPEAT = {"tiny": 1, "quick": 1, "full": 3}
IMAGE_AT = 35  # the image token's place after the v1 system prompt
PROMPT = 45  # tokens masked out of the labels at the start (system prompt and question)


def length_mix(n: int, s: dict, rng: np.random.Generator) -> list[tuple[bool, int]]:
    """(has_image, text tokens) per sample: log-normal around the median, clipped to the tail."""
    samples = []
    for _ in range(n):
        if rng.random() < TEXT_ONLY_SHARE:
            median, tail = s["text_only"]
            samples.append((False, int(np.clip(rng.lognormal(np.log(median), 0.6), PROMPT + 8, tail))))
        else:
            median, tail = s["image_text"]
            samples.append((True, int(np.clip(rng.lognormal(np.log(median), 1.0), PROMPT + 8, tail))))
    return samples


def _item(has_image: bool, text: int, s: dict, image: torch.Tensor, generator: torch.Generator) -> dict:
    ids = torch.randint(3, s["vocab"], (text,), generator=generator)
    ids[0] = 1  # BOS
    if has_image:
        ids[IMAGE_AT] = -200
    labels = ids.clone()
    labels[:PROMPT] = -100
    return {"input_ids": ids, "labels": labels, "image": image if has_image else torch.zeros_like(image)}


def _model(s: dict, root: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    clip = root / "clip"
    tower = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             image_size=s["image"], patch_size=14)  # fmt: skip
    CLIPVisionModel(tower).save_pretrained(clip)
    side = {"shortest_edge": s["image"]}
    CLIPImageProcessorPil(size=side, crop_size={"height": s["image"], "width": s["image"]}).save_pretrained(clip)
    config = LlavaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], intermediate_size=s["intermediate"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["heads"], vocab_size=s["vocab"],
                         max_position_embeddings=4096, mm_vision_tower=str(clip), mm_hidden_size=64,
                         mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_patch_merge_type="flat",
                         tokenizer_model_max_length=s["max_len"], use_cache=False)  # fmt: skip
    config._attn_implementation = "sdpa"
    model = LlavaLlamaForCausalLM(config)
    model.get_vision_tower().load_model()
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"
    )
    model = get_peft_model(model, lora)
    for param in model.base_model.model.get_model().mm_projector.parameters():
        param.requires_grad = True
    return model.train()


def run(size: str) -> list[Row]:
    from llava.data.dataset import DataCollatorForSupervisedDataset
    from llava.data.packing import PACKING_STATS_KEY, PackingConfig, packing_attention_cost
    from llava.model.llava_arch import image_feature_length
    from llava.train.llava_trainer import get_modality_length_grouped_indices

    s = SHAPES[size]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mix = length_mix(s["samples"], s, rng)
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(s, Path(tmp))
    features = image_feature_length(model.base_model.model)
    tokenizer = SimpleNamespace(pad_token_id=0, model_max_length=s["max_len"])
    padded = DataCollatorForSupervisedDataset(tokenizer)
    cost = packing_attention_cost(s["hidden"], "sdpa")
    packed = DataCollatorForSupervisedDataset(
        tokenizer, PackingConfig(image_feature_length=features, attention_cost=cost)
    )

    # The sampler's batches, by the spliced length of each sample (positive: image, negative: text only).
    spliced = [min(text - 1 + features, s["max_len"]) if image else text for image, text in mix]
    lengths = [length if image else -length for (image, _), length in zip(mix, spliced)]
    order = get_modality_length_grouped_indices(lengths, s["batch"], 1, torch.Generator().manual_seed(0))
    batches = [order[i : i + s["batch"]] for i in range(0, len(order) - s["batch"] + 1, s["batch"])]
    image_batches = [b for b in batches if all(mix[i][0] for i in b)]
    text_batches = [b for b in batches if not any(mix[i][0] for i in b)]
    text_share = len(text_batches) / (len(image_batches) + len(text_batches))
    # Image batches spread over the epoch (not the first few), and one text-only batch.
    stride = max(len(image_batches) // s["image_batches"], 1)
    chosen = image_batches[::stride][: s["image_batches"]] + text_batches[:1]
    weights = [(1 - text_share) / s["image_batches"]] * s["image_batches"] + [text_share]

    image = torch.randn(3, s["image"], s["image"])
    generator = torch.Generator().manual_seed(0)
    items = {i: _item(*mix[i], s, image, generator) for batch in chosen for i in batch}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(batch: dict) -> float:
        """CPU seconds of one step on one thread: on a shared machine, wall time on 2 busy cores swung 2x between
        identical steps, while the work (what packing removes) is what CPU time counts."""
        inputs = {key: value for key, value in batch.items() if key != PACKING_STATS_KEY}
        start = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()
        return time.process_time() - start

    real = sum(spliced[i] for b in chosen for i in b)  # over the timed batches, unweighted
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timings = {"padded": [], "packed": []}
    positions = {"padded": 0, "packed": 0}
    batch_tokens = []
    for index, (batch_indices, weight) in enumerate(zip(chosen, weights)):
        samples = [items[i] for i in batch_indices]
        layouts = {"padded": padded(samples), "packed": packed(samples)}
        if index == 0:  # warm-up
            for layout in layouts.values():
                step(layout)
        best = {"padded": float("inf"), "packed": float("inf")}
        for _ in range(REPEAT[size]):
            for name in ("padded", "packed"):  # alternately: drift on a busy machine hits both alike
                best[name] = min(best[name], step(layouts[name]))  # interference only ever adds time
        logger.info("batch %d: CPU s %s, rows: padded %s, packed %s", index, best,
                    tuple(layouts["padded"]["input_ids"].shape), tuple(layouts["packed"]["input_ids"].shape))  # fmt: skip
        for name, seconds in best.items():
            timings[name].append(weight * seconds)
        positions["packed"] += int(layouts["packed"][PACKING_STATS_KEY][1])
        positions["padded"] += len(samples) * max(spliced[i] for i in batch_indices)
        batch_tokens.append(weight * sum(spliced[i] for i in batch_indices))
    torch.set_num_threads(threads)
    tokens = sum(batch_tokens)
    rate = {name: tokens / sum(times) for name, times in timings.items()}
    return [
        Row(f"packing: LoRA step, non-padding tokens/s, packed vs padded (B{s['batch']}, rows {s['max_len']}, "
            f"H{s['hidden']})", rate["packed"], rate["padded"], "tok/CPU-s", ">= 1.3x",
            note=f"packing efficiency {real / positions['packed']:.2f}, padded {real / positions['padded']:.2f}; "
                 "1 thread, CPU time"),
    ]  # fmt: skip
