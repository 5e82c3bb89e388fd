"""Tiny offline stand-ins for the Mistral family: a Mistral-7B-Instruct-like language model and a LLaVA-1.6-Mistral
checkpoint in the layout of ``liuhaotian/llava-v1.6-mistral-7b``, built from a seed beside :func:`build_all`'s parts.

The release's layout (what upstream's ``LlavaMistralForCausalLM`` wrote with transformers 4.36): ``config.json``
with ``"model_type": "llava_mistral"``, anyres with a grid of pinpoints, ``spatial_unpad`` (so ``model.image_newline``
is stored), ``unfreeze_mm_vision_tower: true`` and the fine-tuned vision tower's weights inside the checkpoint
(``model.vision_tower.vision_tower.vision_model.*``), bf16 ``model-0000k-of-0000n.safetensors`` shards with an
index, a sentencepiece tokenizer. The base is Mistral-7B-Instruct-v0.2: grouped-query attention, rope theta 1e6,
no sliding window.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llava.model import compat
from llava.testing import sizes
from llava.testing.build import TinyPaths
from llava.testing.files import write_json
from llava.testing.hub import CLIP_336_REPO, commit_to_hub_cache
from llava.testing.models import _projector_state

MISTRAL_REPO = "mistralai/Mistral-7B-Instruct-v0.2"
LLAVA_16_MISTRAL_REPO = "liuhaotian/llava-v1.6-mistral-7b"
MISTRAL_KV_HEADS = 2  # grouped-query attention, as Mistral's 8 key/value heads for 32 query heads
MISTRAL_ROPE_THETA = 1e6
RELEASE_SAFETENSORS_SHARDS = 2
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
BUILD_VERSION = "2"

# The keys of liuhaotian/llava-v1.6-mistral-7b's config.json beyond Mistral's own (sizes come from the tiny model).
RELEASE_LLAVA_16_FIELDS = {
    "architectures": ["LlavaMistralForCausalLM"],
    "model_type": "llava_mistral",
    "freeze_mm_mlp_adapter": False,
    "freeze_mm_vision_resampler": False,
    "image_aspect_ratio": "anyres",
    "image_crop_resolution": 224,
    "image_grid_pinpoints": sizes.IMAGE_GRID_PINPOINTS,
    "image_split_resolution": 224,
    "mm_patch_merge_type": "spatial_unpad",
    "mm_projector_lr": 2e-05,
    "mm_projector_type": "mlp2x_gelu",
    "mm_resampler_type": None,
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": CLIP_336_REPO,
    "mm_vision_tower_lr": 2e-06,
    "tokenizer_model_max_length": 4096,
    "tokenizer_padding_side": "right",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.36.2",
    "tune_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": True,
    "use_cache": True,
    "use_mm_proj": True,
}


@dataclass(frozen=True)
class FamilyPaths:
    mistral: Path  # like mistralai/Mistral-7B-Instruct-v0.2
    llava_mistral: Path  # like liuhaotian/llava-v1.6-mistral-7b


def mistral_config():
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=sizes.VOCAB_SIZE,
        hidden_size=sizes.LLM_HIDDEN,
        intermediate_size=sizes.LLM_INTERMEDIATE,
        num_hidden_layers=sizes.LLM_LAYERS,
        num_attention_heads=sizes.LLM_HEADS,
        num_key_value_heads=MISTRAL_KV_HEADS,
        head_dim=sizes.LLM_HIDDEN // sizes.LLM_HEADS,
        max_position_embeddings=sizes.LLM_MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_theta=MISTRAL_ROPE_THETA,
        sliding_window=None,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def build_mistral(out_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0) -> Path:
    """A Mistral-Instruct-like language model (random weights, a scaled head as ``llava.testing.models.build_llm``'s) with the
    tiny sentencepiece tokenizer."""
    import torch
    from transformers import GenerationConfig, MistralForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(tokenizer_dir) / name, out_dir / name)
    torch.manual_seed(seed + 11)
    model = MistralForCausalLM(mistral_config()).to(torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(sizes.LM_HEAD_SCALE)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    model.save_pretrained(out_dir)
    compat.config_for_transformers4(out_dir)  # rope_theta as the release writes it (transformers 4.37 reads it)
    return out_dir


def build_llava_v16_mistral(
    out_dir: str | Path, mistral_dir: str | Path, vision_tower_dir: str | Path, seed: int = 0
) -> Path:
    """``liuhaotian/llava-v1.6-mistral-7b``'s layout over the tiny Mistral and CLIP tower (see the module docstring):
    the language model's weights, a projector, an image newline and a fine-tuned (perturbed) copy of the tower."""
    import torch
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_file(Path(mistral_dir) / "model.safetensors")
    state.update(_projector_state(sizes.CLIP_HIDDEN, sizes.LLM_HIDDEN, seed + 12, "model."))
    generator = torch.Generator().manual_seed(seed + 13)
    state["model.image_newline"] = torch.randn(sizes.LLM_HIDDEN, generator=generator) * sizes.LLM_HIDDEN**-0.5
    tower = load_file(Path(vision_tower_dir) / "model.safetensors")
    for key, value in sorted(tower.items()):
        if key.startswith("vision_model."):
            tuned = value + 0.05 * value.std().nan_to_num() * torch.randn(value.shape, generator=generator)
            state[f"model.vision_tower.vision_tower.{key}"] = tuned if value.is_floating_point() else value
    _write_safetensors_shards(state, out_dir, torch.bfloat16)
    config = json.loads((Path(mistral_dir) / "config.json").read_text())
    for key in ("dtype", "rope_parameters"):
        config.pop(key, None)
    config.update(RELEASE_LLAVA_16_FIELDS)
    config.update({"mm_hidden_size": sizes.CLIP_HIDDEN, "rope_theta": MISTRAL_ROPE_THETA, "sliding_window": None})
    config["mm_vision_tower"] = RELEASE_LLAVA_16_FIELDS["mm_vision_tower"]
    write_json(out_dir / "config.json", config)
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        shutil.copyfile(Path(mistral_dir) / name, out_dir / name)
    return out_dir


def _write_safetensors_shards(state: dict, out_dir: Path, dtype, num_shards: int = RELEASE_SAFETENSORS_SHARDS) -> None:
    """``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json`` (the 1.6 releases' format)."""
    from safetensors.torch import save_file

    keys = sorted(state)
    per_shard = -(-len(keys) // num_shards)
    weight_map, total_size = {}, 0
    for index in range(num_shards):
        name = f"model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        shard = {key: state[key].to(dtype).contiguous() for key in keys[index * per_shard : (index + 1) * per_shard]}
        save_file(shard, out_dir / name, metadata={"format": "pt"})
        for key, tensor in shard.items():
            weight_map[key] = name
            total_size += tensor.numel() * tensor.element_size()
    write_json(
        out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    )


def build_families(root: str | Path, tiny: TinyPaths, seed: int = 0) -> FamilyPaths:
    """The Mistral parts under ``root`` (reused when built already with the same version, seed and tiny build)."""
    root = Path(root)
    paths = FamilyPaths(mistral=root / "mistral-tiny", llava_mistral=root / "llava-v1.6-mistral-tiny")
    stamp, wanted = root / ".families-build.json", {"version": BUILD_VERSION, "seed": seed, "tiny": str(tiny.root)}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return paths
    build_mistral(paths.mistral, tiny.llm, seed)
    build_llava_v16_mistral(paths.llava_mistral, paths.mistral, tiny.vision_tower, seed)
    write_json(stamp, wanted)
    return paths


def add_to_hub_cache(hf_home: str | Path, paths: FamilyPaths) -> None:
    """Put the Mistral parts into the offline cache at ``hf_home`` under ``MISTRAL_REPO`` and
    ``LLAVA_16_MISTRAL_REPO``."""
    hub_dir = Path(hf_home) / "hub"
    hub_dir.mkdir(parents=True, exist_ok=True)
    for repo_id, source in ((MISTRAL_REPO, paths.mistral), (LLAVA_16_MISTRAL_REPO, paths.llava_mistral)):
        with tempfile.TemporaryDirectory(dir=hub_dir) as tmp:
            for file in sorted(source.iterdir()):
                if file.is_file():
                    shutil.copyfile(file, Path(tmp) / file.name)
            commit_to_hub_cache(hub_dir, repo_id, tmp)
