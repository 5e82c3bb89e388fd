"""A Hugging Face cache holding the tiny models under the released repo ids, laid out as the releases are.

:func:`build_hub_cache` writes ``liuhaotian/llava-v1.5-7b``, ``lmsys/vicuna-7b-v1.5``,
``openai/clip-vit-large-patch14-336``, ... so that hub ids resolve offline (``HF_HOME=<root> HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from llava.testing.build import TinyPaths, build_all
from llava.testing.files import tree_digest, write_json
from llava.testing.sizes import CLIP_HIDDEN, LLM_HEADS, LLM_HIDDEN, LLM_INTERMEDIATE, LLM_LAYERS, VOCAB_SIZE

logger = logging.getLogger(__name__)


LLAVA_7B_REPO = "liuhaotian/llava-v1.5-7b"
LLAVA_13B_REPO = "liuhaotian/llava-v1.5-13b"
VICUNA_7B_REPO = "lmsys/vicuna-7b-v1.5"
VICUNA_13B_REPO = "lmsys/vicuna-13b-v1.5"
CLIP_336_REPO = "openai/clip-vit-large-patch14-336"
PROJECTOR_7B_REPO = "liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5"
PROJECTOR_7B_FILE = f"{PROJECTOR_7B_REPO}/mm_projector.bin"  # what upstream's scripts pass as a path
LLAVA_REPOS = (LLAVA_7B_REPO, LLAVA_13B_REPO)
VICUNA_REPOS = (VICUNA_7B_REPO, VICUNA_13B_REPO)
RELEASE_SHARDS = 2
HUB_BUILD_VERSION = "2"

# The keys of the released LLaVA-1.5 config.json (written by transformers 4.31): no mm_patch_merge_type, no
# rope_theta, rope_scaling null, model_type "llava" (transformers 5's own LlavaConfig owns that name).
_RELEASE_LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_length": 4096,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0",
    "use_cache": True,
}
_RELEASE_LLAVA_FIELDS = {
    "architectures": ["LlavaLlamaForCausalLM"],
    "model_type": "llava",
    "freeze_mm_mlp_adapter": False,
    "freeze_mm_vision_resampler": False,
    "image_aspect_ratio": "pad",
    "mm_projector_type": "mlp2x_gelu",
    "mm_resampler_type": None,
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": CLIP_336_REPO,
    "tune_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": False,
    "use_mm_proj": True,
}


def _release_llama_config(name: str) -> dict:
    return {
        **_RELEASE_LLAMA_CONFIG,
        "_name_or_path": name,
        "hidden_size": LLM_HIDDEN,
        "intermediate_size": LLM_INTERMEDIATE,
        "num_attention_heads": LLM_HEADS,
        "num_hidden_layers": LLM_LAYERS,
        "num_key_value_heads": LLM_HEADS,
        "vocab_size": VOCAB_SIZE,
    }


def _write_fp16_shards(state: dict, out_dir: Path, num_shards: int = RELEASE_SHARDS) -> None:
    """``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json``, fp16, as the releases store them."""
    import torch

    keys = sorted(state)
    per_shard = -(-len(keys) // num_shards)
    weight_map, total_size = {}, 0
    for index in range(num_shards):
        name = f"pytorch_model-{index + 1:05d}-of-{num_shards:05d}.bin"
        shard = {
            key: state[key].to(torch.float16).contiguous() for key in keys[index * per_shard : (index + 1) * per_shard]
        }
        torch.save(shard, out_dir / name)
        for key, tensor in shard.items():
            weight_map[key] = name
            total_size += tensor.numel() * tensor.element_size()
    write_json(
        out_dir / "pytorch_model.bin.index.json", {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    )


def _stage_clip(staging: Path, paths: TinyPaths) -> None:
    """A full CLIPModel (text + vision) as ``pytorch_model.bin`` with its config and preprocessor config."""
    import torch
    from safetensors.torch import load_file

    state = load_file(paths.vision_tower / "model.safetensors")
    torch.save({key: value.contiguous() for key, value in sorted(state.items())}, staging / "pytorch_model.bin")
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(paths.vision_tower / name, staging / name)


def _stage_vicuna(staging: Path, paths: TinyPaths, repo_id: str) -> None:
    from safetensors.torch import load_file

    _write_fp16_shards(load_file(paths.llm / "model.safetensors"), staging)
    write_json(staging / "config.json", _release_llama_config(repo_id.split("/")[1]))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(paths.llm / name, staging / name)


def _stage_llava(staging: Path, paths: TinyPaths, repo_id: str) -> None:
    """The released layout: fp16 shards of the LM + ``model.mm_projector.*``, no vision tower weights."""
    from safetensors.torch import load_file

    _write_fp16_shards(load_file(paths.llava / "model.safetensors"), staging)
    config = {**_release_llama_config(repo_id.split("/")[1]), **_RELEASE_LLAVA_FIELDS, "mm_hidden_size": CLIP_HIDDEN}
    write_json(staging / "config.json", config)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(paths.llava / name, staging / name)


def _stage_projector(staging: Path, paths: TinyPaths) -> None:
    """The released pretrained projector: ``mm_projector.bin`` (keys ``model.mm_projector.*``) + config."""
    import torch

    state = torch.load(paths.projector, map_location="cpu", weights_only=True)
    torch.save({key: value.to(torch.float16) for key, value in state.items()}, staging / "mm_projector.bin")
    config = {**_release_llama_config("vicuna-7b-v1.5"), **_RELEASE_LLAVA_FIELDS, "mm_hidden_size": CLIP_HIDDEN}
    config.update({"tune_mm_mlp_adapter": True, "image_aspect_ratio": "square"})
    write_json(staging / "config.json", config)


def commit_to_hub_cache(hub_dir: str | Path, repo_id: str, files_dir: str | Path) -> Path:
    """Put the files of ``files_dir`` into ``hub_dir`` as huggingface_hub caches a download of ``repo_id``.

    ``models--owner--name/blobs/<sha256>`` holds the bytes, ``snapshots/<revision>/<file>`` links to the blob
    (relative symlink, as huggingface_hub writes it), ``refs/main`` names the revision. The revision is a digest of
    the files, so the same files give the same cache. Returns the snapshot directory.
    """
    hub_dir, files_dir = Path(hub_dir), Path(files_dir)
    repo_dir = hub_dir / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(tree_digest(files_dir).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / revision
    for source in sorted(p for p in files_dir.rglob("*") if p.is_file()):
        data = source.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / source.relative_to(files_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def build_hub_cache(hf_home: str | Path, paths: TinyPaths | None = None, seed: int = 0) -> Path:
    """A Hugging Face cache (``<hf_home>/hub``) holding the tiny models under the released repo ids.

    ``paths``: a :func:`build_all` build to take the models from (built under ``hf_home/tiny`` when omitted).
    Use it with ``HF_HOME=<hf_home>`` and ``HF_HUB_OFFLINE=1``. Returns the hub cache directory.
    """
    hf_home = Path(hf_home).resolve()
    hub_dir = hf_home / "hub"
    if paths is None:
        paths = build_all(hf_home / "tiny", seed=seed)
    stamp = hub_dir / ".tiny-hub-build.json"
    source_stamp = paths.root / ".tiny-build.json"
    source = json.loads(source_stamp.read_text()) if source_stamp.exists() else None
    wanted = {"version": HUB_BUILD_VERSION, "source": str(paths.root), "source_build": source}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return hub_dir
    stages = [
        (CLIP_336_REPO, lambda d: _stage_clip(d, paths)),
        (PROJECTOR_7B_REPO, lambda d: _stage_projector(d, paths)),
    ]
    stages += [(repo, lambda d, repo=repo: _stage_vicuna(d, paths, repo)) for repo in VICUNA_REPOS]
    stages += [(repo, lambda d, repo=repo: _stage_llava(d, paths, repo)) for repo in LLAVA_REPOS]
    hub_dir.mkdir(parents=True, exist_ok=True)
    for repo_id, stage in stages:
        with tempfile.TemporaryDirectory(dir=hub_dir) as tmp:
            stage(Path(tmp))
            commit_to_hub_cache(hub_dir, repo_id, tmp)
    write_json(stamp, wanted)
    logger.info("tiny models under the released repo ids are in the Hugging Face cache %s", hub_dir)
    return hub_dir
