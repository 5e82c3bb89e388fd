"""Shared pieces of the training tests: command lines on the tiny model, the expected output file sets, and readers
for the files a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

LORA_R = 4
LEARNING_RATE = 1e-3
PROJECTOR_LR = 2e-4
MODEL_MAX_LENGTH = 256
SEED = 7
NUM_LAYERS = 2
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROJECTOR_KEYS = ("mm_projector.0.weight", "mm_projector.0.bias", "mm_projector.2.weight", "mm_projector.2.bias")

# tokenizer.model (sentencepiece): what upstream's slow tokenizer (transformers 4.37, use_fast=False) reads.
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}
LORA_FILES = {
    "README.md",  # PEFT's model card
    "adapter_config.json",
    "adapter_model.bin",
    "non_lora_trainables.bin",
    "config.json",
    "training_args.bin",
} | TOKENIZER_FILES
PROJECTOR_FILES = {"mm_projector.bin", "config.json", "training_args.bin"} | TOKENIZER_FILES
RESUME_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}


def flags(**values) -> list[str]:
    """`flags(lora_r=4, bf16=True)` -> `["--lora_r", "4", "--bf16", "True"]`."""
    argv = []
    for name, value in values.items():
        argv += [f"--{name}", str(value)]
    return argv


def multimodal_flags(tiny, output_dir, **overrides) -> list[str]:
    """A LLaVA-1.5-style LoRA run on the tiny model: base LLM + CLIP tower + pretrained projector, 4 steps."""
    values = dict(
        model_name_or_path=tiny.llm,
        version="v1",
        data_path=tiny.data,
        image_folder=tiny.image_folder,
        vision_tower=tiny.vision_tower,
        pretrain_mm_mlp_adapter=tiny.projector,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
        group_by_modality_length=True,
        lora_enable=True,
        lora_r=LORA_R,
        lora_alpha=2 * LORA_R,
        mm_projector_lr=PROJECTOR_LR,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        per_device_train_batch_size=2,
        max_steps=4,
        save_steps=2,
        logging_steps=1,
        model_max_length=MODEL_MAX_LENGTH,
        seed=SEED,
        report_to="none",
        dataloader_num_workers=0,
        output_dir=output_dir,
    )
    values.update(overrides)
    return flags(**{name: value for name, value in values.items() if value is not None})


def files_in(directory: Path) -> set[str]:
    return {path.name for path in Path(directory).iterdir() if path.is_file()}


def checkpoints(directory: Path) -> list[str]:
    return sorted(
        (path.name for path in Path(directory).glob("checkpoint-*")), key=lambda name: int(name.split("-")[1])
    )


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_config(directory: Path) -> dict:
    return json.loads((Path(directory) / "config.json").read_text())


def base_llm_weights(tiny) -> dict[str, torch.Tensor]:
    return load_file(Path(tiny.llm) / "model.safetensors")


def expected_adapter_keys() -> set[str]:
    """Keys of adapter_model.bin as PEFT writes them for LoRA on every linear layer of the tiny LLM."""
    keys = set()
    for layer in range(NUM_LAYERS):
        for target in LORA_TARGETS:
            block = "self_attn" if target in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            for matrix in ("lora_A", "lora_B"):
                keys.add(f"base_model.model.model.layers.{layer}.{block}.{target}.{matrix}.weight")
    return keys


def adapter_key(parameter_name: str) -> str:
    """`...q_proj.lora_A.default.weight` (model) -> `...q_proj.lora_A.weight` (PEFT's file)."""
    return parameter_name.replace(".default.", ".")


def logged_losses(log_history: list[dict]) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}


def write_caption_data(tiny, path: Path) -> Path:
    """The tiny dataset's single-round image samples: what the plain template (projector pretraining) accepts."""
    records = json.loads(Path(tiny.data).read_text())
    captions = [record for record in records if "image" in record and len(record["conversations"]) == 2]
    path.write_text(json.dumps(captions))
    return path
