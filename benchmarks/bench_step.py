"""One LoRA training step (forward + backward + AdamW) of our LLaVA model against a bare PEFT `LlamaForCausalLM`
fed the same number of tokens as `inputs_embeds`: the multimodal overhead (vision tower, projector, splice).

Both models have the same language model and the same LoRA (every linear, r 16). Ours gets token ids with an image
placeholder plus 336 px images through a small frozen CLIP tower (576 patches, as CLIP ViT-L/14-336 gives, but 2 thin
layers: at 7B scale the tower costs well under 1% of a step, so a full-size tower next to this small LM would
overstate it). The baseline gets precomputed embeddings of the spliced length, so it pays for neither the embedding
lookup nor the splice. Timed in CPU time on one thread (`common.paired_cpu_times`: alternating rounds, best of
each, the rounds' spread in the note).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from common import Row, paired_cpu_times

SHAPES = {
    "tiny": dict(hidden=64, layers=2, intermediate=172, heads=4, vocab=1000, batch=2, text=48, image=336),
    "quick": dict(hidden=512, layers=4, intermediate=1376, heads=8, vocab=32000, batch=2, text=448, image=336),
    "full": dict(hidden=1024, layers=8, intermediate=2816, heads=16, vocab=32000, batch=4, text=1472, image=336),
}
IMAGE_AT = 35
# Alternating rounds (one step of each model a round), after a warm-up step each. CPU time on one thread counts
# the work, not the machine's other load; still, at load average 4-5 on the 2 cores one round's ratio strayed by up
# to 20% (a busy sibling thread slows the same work), so --quick takes 8 rounds of 2 rows (the ratio does not
# depend on the batch) rather than 4 of 4: the same 80 CPU seconds, twice the chances of an undisturbed round.
REPEAT = {"tiny": 2, "quick": 8, "full": 5}


def _clip_dir(root: Path, image_size: int) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=14)  # fmt: skip
    CLIPVisionModel(config).save_pretrained(root)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(root)
    return root


def run(size: str) -> list[Row]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    s = SHAPES[size]
    torch.manual_seed(0)
    llama = dict(hidden_size=s["hidden"], num_hidden_layers=s["layers"], intermediate_size=s["intermediate"],
                 num_attention_heads=s["heads"], num_key_value_heads=s["heads"], vocab_size=s["vocab"],
                 max_position_embeddings=4096)  # fmt: skip
    lora = dict(r=16, lora_alpha=32, lora_dropout=0.0,
                target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        clip = _clip_dir(Path(tmp) / "clip", s["image"])
        config = LlavaConfig(**llama, mm_vision_tower=str(clip), mm_hidden_size=64, mm_projector_type="mlp2x_gelu",
                             mm_vision_select_layer=-2, mm_patch_merge_type="flat", tokenizer_model_max_length=4096)  # fmt: skip
        ours = LlavaLlamaForCausalLM(config)
        ours.get_vision_tower().load_model()
        ours = get_peft_model(ours, LoraConfig(**lora))
        for param in ours.base_model.model.get_model().mm_projector.parameters():
            param.requires_grad = True
        patches = ours.base_model.model.get_vision_tower().num_patches

    base = get_peft_model(LlamaForCausalLM(LlamaConfig(**llama)), LoraConfig(**lora))
    batch, text = s["batch"], s["text"]
    ids = torch.randint(3, s["vocab"], (batch, text))
    ids[:, IMAGE_AT] = -200
    labels = torch.where(ids == -200, -100, ids)
    images = torch.randn(batch, 3, s["image"], s["image"])
    length = text - 1 + patches
    embeds = torch.randn(batch, length, s["hidden"])
    embed_labels = torch.randint(3, s["vocab"], (batch, length))

    def step(model, optimizer, **inputs):
        def run_once():
            optimizer.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()
            optimizer.step()

        return run_once

    ours_opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4)
    base_opt = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=1e-4)
    times = paired_cpu_times(
        step(ours, ours_opt, input_ids=ids, labels=labels, images=images),
        step(base, base_opt, inputs_embeds=embeds, labels=embed_labels),
        repeat=REPEAT[size],
    )
    ours_s, base_s = times.best
    tokens = batch * length
    return [
        Row(f"LoRA step, LLaVA vs bare LM (H{s['hidden']}, {s['layers']} layers, {tokens} tokens)",
            ours_s * 1e3, base_s * 1e3, "CPU-ms", "<= 1.05x",
            note=f"{tokens / ours_s:.0f} tokens/CPU-s; 1 thread, CPU time; {times.spread()}"),
    ]  # fmt: skip
