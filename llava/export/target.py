"""Which transformers class a run exports to, what of it cannot be exported, and the ``config.json`` written.

=====================================================  ===========================================================
run (its config.json)                                  export
=====================================================  ===========================================================
``image_aspect_ratio`` square or pad                   ``LlavaForConditionalGeneration`` (llava-hf/llava-1.5-*-hf)
``anyres`` + ``mm_patch_merge_type`` spatial_unpad     ``LlavaNextForConditionalGeneration`` (llava-v1.6-*-hf)
=====================================================  ===========================================================

transformers' classes fix a few things upstream's flags leave open; a run outside them is refused with every
reason at once, each naming the training flag: the projector must be ``mlp2x_gelu`` (transformers' two linears
with GELU between), the tower CLIP, the language model a Llama (or Mistral), no ``<im_start>``/``<im_end>``
around the image, and anyres only with ``spatial_unpad`` (what LlavaNext always does).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import torch

# model_type of our config -> model_type of transformers' text config.
TEXT_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
EXPORTABLE_PROJECTOR = "mlp2x_gelu"
# mm_vision_select_feature -> transformers' vision_feature_select_strategy ("default" drops the CLS feature).
SELECT_STRATEGIES = {"patch": "default", "cls_patch": "full"}
ANYRES = "anyres"
SPATIAL_UNPAD = "spatial_unpad"
# Training-only or LLaVA-specific fields of our config that have no place in the text config.
NOT_TEXT_CONFIG_FIELDS = ("architectures", "_name_or_path", "transformers_version", "auto_map")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Target:
    """The transformers classes a run exports to and the vision settings they need."""

    architecture: str  # LlavaForConditionalGeneration | LlavaNextForConditionalGeneration
    model_type: str  # llava | llava_next
    processor_class: str
    image_processor_type: str
    text_model_type: str
    select_strategy: str  # default | full
    feature_layer: int
    image_size: int
    patch_size: int
    pad_to_square: bool  # image_aspect_ratio pad
    grid_pinpoints: list[list[int]] | None  # (height, width) each, transformers' order; anyres only

    @property
    def is_next(self) -> bool:
        return self.model_type == "llava_next"

    @property
    def features_per_image(self) -> int:
        """Features of one square (or padded) image: the patches, plus CLS under the "full" strategy."""
        patches = (self.image_size // self.patch_size) ** 2
        return patches + (1 if self.select_strategy == "full" else 0)


def target_for(config: Any, vision_config: Any) -> Target:
    """The export target of a model with ``config`` (ours) and its vision tower's ``vision_config``.

    Raises:
        ValueError: the run uses something transformers' Llava cannot hold; every reason, each naming its flag.
    """
    problems = []
    model_type = getattr(config, "model_type", None)
    text_model_type = TEXT_MODEL_TYPES.get(model_type)
    if text_model_type is None:
        problems.append(
            f"model_type {model_type!r}: only LLaVA on Llama or Mistral exports ({', '.join(sorted(TEXT_MODEL_TYPES))})"
        )
    projector = getattr(config, "mm_projector_type", "linear")
    if projector != EXPORTABLE_PROJECTOR:
        problems.append(
            f"--mm_projector_type {projector}: transformers' Llava has a two-layer GELU projector, "
            f"--mm_projector_type {EXPORTABLE_PROJECTOR} (LLaVA-1.5's)"
        )
    select_feature = getattr(config, "mm_vision_select_feature", "patch")
    if select_feature not in SELECT_STRATEGIES:
        problems.append(f"--mm_vision_select_feature {select_feature}: use patch or cls_patch")
    if getattr(config, "mm_use_im_start_end", False):
        problems.append(
            "--mm_use_im_start_end True: transformers' Llava puts the image features alone where <image> is, "
            "without <im_start>/<im_end> around them"
        )
    if getattr(vision_config, "model_type", None) != "clip_vision_model":
        problems.append(f"vision tower {getattr(config, 'mm_vision_tower', None)}: only a CLIP vision tower exports")
    aspect_ratio = getattr(config, "image_aspect_ratio", "square") or "square"
    merge_type = getattr(config, "mm_patch_merge_type", "flat") or "flat"
    is_next = aspect_ratio == ANYRES
    pinpoints = None
    if is_next:
        if merge_type != SPATIAL_UNPAD:
            problems.append(
                f"--image_aspect_ratio anyres with --mm_patch_merge_type {merge_type}: transformers' LlavaNext always "
                f"lays anyres tiles out as --mm_patch_merge_type {SPATIAL_UNPAD} does"
            )
        raw = getattr(config, "image_grid_pinpoints", None)
        if not raw:
            problems.append("--image_aspect_ratio anyres without --image_grid_pinpoints")
        else:
            raw = ast.literal_eval(raw) if isinstance(raw, str) else raw
            # Upstream's pinpoints are (width, height), transformers' (height, width).
            pinpoints = [[int(height), int(width)] for width, height in raw]
    elif "unpad" in merge_type:
        problems.append(
            f"--mm_patch_merge_type {merge_type} without --image_aspect_ratio anyres: the image_newline it adds has "
            "no place in transformers' Llava"
        )
    if problems:
        raise ValueError("this model cannot be exported to transformers' Llava: " + "; ".join(problems))
    return Target(
        architecture="LlavaNextForConditionalGeneration" if is_next else "LlavaForConditionalGeneration",
        model_type="llava_next" if is_next else "llava",
        processor_class="LlavaNextProcessor" if is_next else "LlavaProcessor",
        image_processor_type=(
            "LlavaNextImageProcessor"
            if is_next
            else "LlavaImageProcessor"
            if aspect_ratio == "pad"
            else "CLIPImageProcessor"
        ),
        text_model_type=text_model_type,
        select_strategy=SELECT_STRATEGIES[select_feature],
        feature_layer=int(getattr(config, "mm_vision_select_layer", -2)),
        image_size=int(vision_config.image_size),
        patch_size=int(vision_config.patch_size),
        pad_to_square=aspect_ratio == "pad",
        grid_pinpoints=pinpoints,
    )


def text_config_dict(config: Any, text_model_type: str, vocab_rows: int, pad_token_id: int) -> dict[str, Any]:
    """The language model's config as transformers' own class for it has it (no ``mm_*`` fields)."""
    from transformers import AutoConfig

    known = set(AutoConfig.for_model(text_model_type).to_dict())
    values = {
        key: value
        for key, value in config.to_dict().items()
        if key in known and key not in NOT_TEXT_CONFIG_FIELDS and key != "model_type"
    }
    values.update(vocab_size=vocab_rows, pad_token_id=pad_token_id)
    return AutoConfig.for_model(text_model_type, **values).to_dict()


def hf_config_dict(
    target: Target,
    config: Any,
    vision_config: Any,
    *,
    vocab_rows: int,
    image_token_id: int,
    pad_token_id: int,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """``config.json`` of the export: transformers' LlavaConfig / LlavaNextConfig, plus the fields transformers 4
    reads at the top level (``vocab_size``, ``ignore_index``, ``pad_token_id``)."""
    from transformers import LlavaConfig, LlavaNextConfig

    dtype_name = str(dtype).removeprefix("torch.")
    text = text_config_dict(config, target.text_model_type, vocab_rows, pad_token_id)
    text["dtype"] = dtype_name
    vision = vision_config.to_dict()
    vision.update(dtype=dtype_name, _name_or_path=str(getattr(config, "mm_vision_tower", "")))
    options = dict(
        text_config=text,
        vision_config=vision,
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=target.select_strategy,
        vision_feature_layer=target.feature_layer,
        image_seq_length=target.features_per_image,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    if target.is_next:
        hf_config = LlavaNextConfig(image_grid_pinpoints=target.grid_pinpoints, **options)
    else:
        hf_config = LlavaConfig(**options)
    hf_config.pad_token_id = pad_token_id
    hf_config.dtype = dtype
    hf_config.architectures = [target.architecture]
    data = hf_config.to_dict()
    data.update(vocab_size=vocab_rows, ignore_index=IGNORE_INDEX)
    return data
