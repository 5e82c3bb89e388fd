"""The CLIP vision tower LLaVA reads image features from."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from llava.model.hub import resolve_model_dir
from llava.model.multimodal_encoder.s2 import DEFAULT_S2_SCALES, multiscale_forward, parse_s2_scales
from llava.utils import quiet_transformers

logger = logging.getLogger(__name__)


class CLIPVisionTower(nn.Module):
    """A frozen ``CLIPVisionModel`` returning the hidden states of ``mm_vision_select_layer``.

    With ``delay_load`` only the config is read (the weights are loaded later by ``load_model``), as when a LLaVA-1.5
    checkpoint is instantiated: its weights do not contain the tower, which lives at ``mm_vision_tower``. A checkpoint
    whose config says ``unfreeze_mm_vision_tower`` (LLaVA-1.6) holds the tower it fine-tuned: then the tower is built
    from its config, empty, and the checkpoint's weights fill it (upstream loads ``mm_vision_tower``'s weights first
    and lets the checkpoint overwrite them; a load inside a load is refused by transformers 5).
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
        if not delay_load:
            self.load_model()
        elif getattr(args, "unfreeze_mm_vision_tower", False):
            self._build_for_checkpoint()
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
        self.image_processor = self._load_image_processor()
        # A CLIP checkpoint (like openai/clip-vit-large-patch14-336) also holds the text tower, which
        # CLIPVisionModel does not use; keep transformers from reporting each of those weights as unexpected.
        with quiet_transformers():
            self.vision_tower = CLIPVisionModel.from_pretrained(self.model_dir, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def _load_image_processor(self) -> CLIPImageProcessorPil:
        return CLIPImageProcessorPil.from_pretrained(self.model_dir)

    def _build_for_checkpoint(self) -> None:
        self.image_processor = self._load_image_processor()
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
                return [self._image_features(image.unsqueeze(0)) for image in images]
            return self._image_features(images)

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
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


class CLIPVisionTowerS2(CLIPVisionTower):
    """The CLIP tower run at several scales (upstream's ``s2`` / ``s2_scales``, e.g. ``"336,672,1008"``).

    Same token count as :class:`CLIPVisionTower`, ``len(scales)`` times its width (:attr:`hidden_size`, which the
    projector takes as ``mm_hidden_size``); images are preprocessed at the largest scale. The multiscale forward is
    this package's own (:mod:`llava.model.multimodal_encoder.s2`), not the ``s2wrapper`` upstream imports.
    """

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        self.s2_scales = parse_s2_scales(getattr(args, "s2_scales", DEFAULT_S2_SCALES))
        self.s2_split_size, self.s2_image_size = self.s2_scales[0], self.s2_scales[-1]
        super().__init__(vision_tower, args, delay_load)
        if self.config.image_size != self.s2_split_size:
            raise ValueError(
                f"--s2_scales {','.join(map(str, self.s2_scales))}: the smallest scale must be the vision tower's "
                f"input size, {self.config.image_size} for {vision_tower}"
            )

    def _load_image_processor(self) -> CLIPImageProcessorPil:
        processor = super()._load_image_processor()
        processor.size["shortest_edge"] = self.s2_image_size
        processor.crop_size["height"] = processor.crop_size["width"] = self.s2_image_size
        return processor

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        return multiscale_forward(self._features, images, self.s2_scales)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size * len(self.s2_scales)
