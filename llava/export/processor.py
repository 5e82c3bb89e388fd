"""The processor files of the export, in the llava-hf layout that transformers 4.4x-5 and the servers read:

- ``preprocessor_config.json``: the vision tower's CLIP settings (resize, crop, mean, std) under the class that
  prepares images as the run did: ``CLIPImageProcessor`` for ``square``, ``LlavaImageProcessor`` with ``do_pad``
  for ``pad`` (padded to a square with the mean colour first, as ``expand2square``), ``LlavaNextImageProcessor``
  with the grid pinpoints for ``anyres``.
- ``processor_config.json``: what transformers' own conversion leaves unset and ``LlavaProcessor`` needs to expand
  ``<image>`` into one token per feature: ``patch_size``, ``vision_feature_select_strategy`` and
  ``num_additional_image_tokens`` (CLIP's CLS, dropped again under the "default" strategy).
- ``chat_template.jinja`` (and ``chat_template`` in ``tokenizer_config.json``, where older readers look).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.export.target import Target

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The CLIP image processor's own settings, copied from the vision tower's processor.
CLIP_SETTINGS = (
    "crop_size", "do_center_crop", "do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean",
    "image_std", "resample", "rescale_factor", "size",
)  # fmt: skip
# CLIP's class token: one feature more than the patches, before the strategy drops it.
CLIP_ADDITIONAL_TOKENS = 1


def image_processor_dict(target: Target, image_processor: Any) -> dict[str, Any]:
    """``preprocessor_config.json`` for ``target`` from the vision tower's image processor."""
    settings = image_processor.to_dict()
    data = {key: settings[key] for key in CLIP_SETTINGS if key in settings}
    data["image_processor_type"] = target.image_processor_type
    data["processor_class"] = target.processor_class
    if target.pad_to_square:
        data["do_pad"] = True
    if target.is_next:
        data["image_grid_pinpoints"] = target.grid_pinpoints
        data["do_pad"] = True  # LlavaNext's: pad the tiles of a batch to the same count
    return dict(sorted(data.items()))


def processor_dict(target: Target) -> dict[str, Any]:
    return {
        "image_token": DEFAULT_IMAGE_TOKEN,
        "num_additional_image_tokens": CLIP_ADDITIONAL_TOKENS,
        "patch_size": target.patch_size,
        "processor_class": target.processor_class,
        "vision_feature_select_strategy": target.select_strategy,
    }


def write_processor_files(out_dir: Path, target: Target, image_processor: Any, chat_template: str) -> None:
    _write_json(out_dir / PREPROCESSOR_CONFIG_FILE, image_processor_dict(target, image_processor))
    _write_json(out_dir / PROCESSOR_CONFIG_FILE, processor_dict(target))
    (out_dir / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
