"""The CLIP vision tower LLaVA reads image features from."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from llava.model.hub import resolve_model_dir
from llava.utils import quiet_transformers

logger = logging.getLogger(__name__)


class CLIPVisionTower(nn.Module):
    """A frozen ``CLIPVisionModel`` returning the hidden states of ``mm_vision_select_layer``.

    With ``delay_load`` only the config is read (the weights are loaded later by ``load_model``), as when a LLaVA
    checkpoint is instantiated: its weights do not contain the tower, which lives at ``mm_vision_tower``.
    ``vision_tower`` is a local directory or a hub id (``openai/clip-vit-large-patch14-336``); it is kept as given
    (it is what the config records), and read from the directory it resolves to.
    """

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self._model_dir = None
        self.select_layer = args.mm_vision_select_layer
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if getattr(args, "unfreeze_mm_vision_tower", False) and torch.empty(0).device.type == "meta":
            # Inside a model's from_pretrained (LLaVA-NeXT's marker of a checkpoint that holds the tower's weights):
            # the tower's structure, which the checkpoint's weights then fill.
            self._build_empty()
        elif not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()
        else:
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.model_dir)

    @property
    def model_dir(self):
        """The local directory of ``vision_tower_name`` (resolved through the HF cache once)."""
        if self._model_dir is None:
            self._model_dir = resolve_model_dir(
                self.vision_tower_name, what="vision tower (--vision_tower / mm_vision_tower)"
            )
        return self._model_dir

    def load_model(self, device_map=None) -> None:
        if self.is_loaded:
            logger.info("%s is already loaded; load_model() called again, skipping.", self.vision_tower_name)
            return
        # The PIL-backed class by name: `CLIPImageProcessor` would warn at every start that torchvision is missing
        # and fall back to this same class. It holds the settings; llava.mm_utils.preprocess_images does the work
        # (PIL's pixels, which upstream trained on with transformers 4.37's processor, about 5x faster).
        self.image_processor = CLIPImageProcessorPil.from_pretrained(self.model_dir)
        # A CLIP checkpoint (like openai/clip-vit-large-patch14-336) also holds the text tower, which
        # CLIPVisionModel does not use; keep transformers from reporting each of those weights as unexpected.
        with quiet_transformers():
            self.vision_tower = CLIPVisionModel.from_pretrained(self.model_dir, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def _build_empty(self) -> None:
        self.image_processor = CLIPImageProcessorPil.from_pretrained(self.model_dir)
        self.vision_tower = CLIPVisionModel._from_config(CLIPVisionConfig.from_pretrained(self.model_dir))
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, image_forward_outs) -> torch.Tensor:
        features = image_forward_outs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            return features[:, 1:]
        if self.select_feature == "cls_patch":
            return features
        raise ValueError(f"Unexpected select feature: {self.select_feature!r} (use 'patch' or 'cls_patch')")

    def forward(self, images):
        # Frozen (as upstream) the tower keeps no graph; trained (--unfreeze_mm_vision_tower, --lora_vision_tower)
        # it does.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trains):
            if isinstance(images, list):
                return [self._features(image.unsqueeze(0)) for image in images]
            return self._features(images)

    @property
    def trains(self) -> bool:
        return self.is_loaded and any(param.requires_grad for param in self.vision_tower.parameters())

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(outputs).to(images.dtype)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2
