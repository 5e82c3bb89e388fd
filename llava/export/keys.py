"""Parameter names: ours (upstream's ``LlavaLlamaForCausalLM``) -> transformers' Llava in the llava-hf layout.

The layout written is the one the llava-hf repos on the hub hold (``llava-hf/llava-1.5-7b-hf``), which
transformers 4.37+ reads as it is and transformers 5 renames on load (its ``conversion_mapping`` for ``llava`` and
``llava_next``); vLLM, SGLang and TGI read it too:

=========================================================  ===================================================
ours                                                       llava-hf
=========================================================  ===================================================
``model.embed_tokens`` / ``model.layers.N`` / ``model.norm``  ``language_model.model.…``
``lm_head``                                                ``language_model.lm_head``
``model.vision_tower.vision_tower.<CLIP vision>``          ``vision_tower.vision_model.<CLIP vision>``
``model.mm_projector.0`` / ``.2`` (mlp2x_gelu)             ``multi_modal_projector.linear_1`` / ``linear_2``
``model.image_newline`` (spatial_unpad)                    ``image_newline`` (LlavaNext)
=========================================================  ===================================================
"""

from __future__ import annotations

from collections.abc import Iterable

OUR_VISION_TOWER = "model.vision_tower.vision_tower."
OUR_PROJECTOR = "model.mm_projector."
OUR_IMAGE_NEWLINE = "model.image_newline"
OUR_LANGUAGE_MODEL = "model."
OUR_LM_HEAD = "lm_head."

HF_VISION_TOWER = "vision_tower."
# transformers 5's CLIPVisionModel names its weights without this level; the llava-hf files have it.
CLIP_VISION_MODEL = "vision_model."
HF_PROJECTOR = "multi_modal_projector."
HF_IMAGE_NEWLINE = "image_newline"
HF_LANGUAGE_MODEL = "language_model.model."
HF_LM_HEAD = "language_model.lm_head."
HF_EMBED_TOKENS = HF_LANGUAGE_MODEL + "embed_tokens.weight"
HF_LM_HEAD_WEIGHT = HF_LM_HEAD + "weight"
# mlp2x_gelu is nn.Sequential(Linear, GELU, Linear): its linears are layers 0 and 2.
PROJECTOR_LAYERS = {"0": "linear_1", "2": "linear_2"}


def hf_name(name: str) -> str | None:
    """The llava-hf name of one of our parameter names; None when it has none (the caller reports it)."""
    if name.startswith(OUR_VISION_TOWER):
        rest = name.removeprefix(OUR_VISION_TOWER)
        return HF_VISION_TOWER + (rest if rest.startswith(CLIP_VISION_MODEL) else CLIP_VISION_MODEL + rest)
    if name.startswith(OUR_PROJECTOR):
        layer, _, rest = name.removeprefix(OUR_PROJECTOR).partition(".")
        return HF_PROJECTOR + PROJECTOR_LAYERS[layer] + "." + rest if layer in PROJECTOR_LAYERS and rest else None
    if name == OUR_IMAGE_NEWLINE:
        return HF_IMAGE_NEWLINE
    if name.startswith(OUR_LM_HEAD):
        return HF_LM_HEAD + name.removeprefix(OUR_LM_HEAD)
    if name.startswith(OUR_LANGUAGE_MODEL):
        return HF_LANGUAGE_MODEL + name.removeprefix(OUR_LANGUAGE_MODEL)
    return None


def hf_names(names: Iterable[str]) -> dict[str, str]:
    """``{our name: llava-hf name}`` for every name.

    Raises:
        ValueError: names that have no place in transformers' Llava, listed.
    """
    mapping, unknown = {}, []
    for name in names:
        target = hf_name(name)
        if target is None:
            unknown.append(name)
        else:
            mapping[name] = target
    if unknown:
        raise ValueError(
            f"these weights have no place in transformers' Llava: {', '.join(sorted(unknown)[:8])}"
            f"{' and more' if len(unknown) > 8 else ''}"
        )
    return mapping
