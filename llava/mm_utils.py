"""Image and prompt helpers shared by training, the model and inference (upstream's names and semantics).

This module holds the ONE implementation of each: ``expand2square``, the anyres grid arithmetic, image
processing for ``image_aspect_ratio`` square / pad / anyres (through ``preprocess_images``, the CLIP processor's
transform about 5x faster, within 1/255 of its pixels on photos), and ``tokenizer_image_token``.
"""

from __future__ import annotations

import ast
import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, StoppingCriteria
from transformers.image_utils import PILImageResampling
from transformers.utils import is_torchvision_available

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.tokenization import encode
from llava.utils import one_torch_thread

Resolution = tuple[int, int]  # (width, height)


# ----------------------------------------------------------------------------------------------------------------
# anyres grid arithmetic


def parse_grid_pinpoints(grid_pinpoints) -> list[list[int]] | None:
    """anyres's candidate resolutions as ``[[width, height], ...]``, from the list itself or its text form (how
    config.json and the command line hold them: ``'[[336,672],[672,336]]'``); None when it is not such a list."""
    value = grid_pinpoints
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if not isinstance(value, (list, tuple)) or not value:
        return None
    pairs = []
    for pair in value:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, int) and v > 0 for v in pair)):
            return None
        pairs.append([int(pair[0]), int(pair[1])])
    return pairs


def _parse_pinpoints(grid_pinpoints) -> list[Resolution]:
    pairs = parse_grid_pinpoints(grid_pinpoints)
    if pairs is None:
        raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r} is not a list of [width, height] pairs")
    return [tuple(pair) for pair in pairs]


def select_best_resolution(original_size: Resolution, possible_resolutions: Sequence[Resolution]) -> Resolution:
    """The candidate (width, height) that keeps the most of the image's pixels, then wastes the fewest.

    The image is scaled to fit each candidate keeping its aspect ratio; the effective resolution is the scaled
    pixel count (never more than the original's), the waste is the candidate's pixels left over.
    """
    original_width, original_height = original_size
    best, best_key = None, None
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        scaled = int(original_width * scale) * int(original_height * scale)
        effective = min(scaled, original_width * original_height)
        key = (effective, -(width * height - effective))
        if best_key is None or key > best_key:
            best, best_key = (width, height), key
    return best


def resize_and_pad_image(image: Image.Image, target_resolution: Resolution) -> Image.Image:
    """Scale ``image`` to fit ``target_resolution`` keeping its aspect ratio, centred on black."""
    original_width, original_height = image.size
    target_width, target_height = target_resolution
    scale_w, scale_h = target_width / original_width, target_height / original_height
    if scale_w < scale_h:
        new_width, new_height = target_width, min(math.ceil(original_height * scale_w), target_height)
    else:
        new_width, new_height = min(math.ceil(original_width * scale_h), target_width), target_height
    canvas = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    canvas.paste(
        image.resize((new_width, new_height)), ((target_width - new_width) // 2, (target_height - new_height) // 2)
    )
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Row-major square crops of ``patch_size``."""
    width, height = image.size
    return [
        image.crop((left, top, left + patch_size, top + patch_size))
        for top in range(0, height, patch_size)
        for left in range(0, width, patch_size)
    ]


def get_anyres_image_grid_shape(image_size: Resolution, grid_pinpoints, patch_size: int) -> tuple[int, int]:
    """(columns, rows) of vision-tower tiles that anyres cuts an image of ``image_size`` (w, h) into."""
    width, height = select_best_resolution(image_size, _parse_pinpoints(grid_pinpoints))
    return width // patch_size, height // patch_size


def process_anyres_image(image: Image.Image, processor, grid_pinpoints) -> torch.Tensor:
    """(1 + tiles, C, H, W): the whole image resized to the tower's input, then the tiles of its best grid."""
    best = select_best_resolution(image.size, _parse_pinpoints(grid_pinpoints))
    tiles = divide_to_patches(resize_and_pad_image(image, best), processor.crop_size["height"])
    side = processor.size["shortest_edge"]
    views = [image.resize((side, side)), *tiles]
    return preprocess_images(views, processor)


# ----------------------------------------------------------------------------------------------------------------
# The CLIP transform, fast
#
# What the vision tower's CLIPImageProcessor does to one image (transformers 5, PIL backend): convert to RGB
# (transparency composited on white), resize so the shortest edge is `size["shortest_edge"]` (the long edge
# `int(shortest * long / short)`) with PIL's antialiased bicubic filter, centre-crop to `crop_size`, scale by 1/255,
# subtract the mean and divide by the std. Per 640x480 photo padded to 640x640, that takes about 6 ms, of which
# PIL's bicubic resize is 3.9 ms and the rest is the processor's array conversions, float64 rescale and checks.
#
# Measured on 640x480 JPEGs, 336 px output, one thread (benchmarks/bench_image.py has the row):
# - torch's uint8 antialiased bicubic resize (the AVX2 kernel torchvision's resize calls, and with it transformers'
#   torchvision-backed "fast" CLIP processor) takes 0.56 ms and follows PIL's algorithm (same support, same
#   a = -0.5 cubic, 8-bit intermediate between the horizontal and the vertical pass); its weights are 16-bit
#   integers where PIL's are 22-bit, so a value lands one level off where the exact sum is within about 0.01 of
#   a rounding boundary: 0.2-0.4% of the values on photos, never more than 1/255 there. Synthetic per-pixel noise
#   or 3-8 px checkerboards can line up two such misses in one output value (2/255 in 6e-5 of the values).
#   Enlarging, its weights are coarser and photos get 2/255 too: images smaller than the output take PIL's exact
#   horizontal pass and torch's vertical pass (one rounding step can differ: never more than 1/255).
#   This is the path taken: the whole transform costs about 1 ms per COCO image.
# - PIL's exact horizontal pass followed by torch's vertical pass is never more than 1/255 off, but costs 3.1 ms
#   for a COCO image (the horizontal pass over every input row is two thirds of PIL's work): under 2x.
# - torch's float32 antialiased resize (5.8 ms) is slower than PIL itself.
# - `Image.draft` (JPEG DCT-domain downscaling while decoding) changes values by up to 4/255 even with a 2x
#   margin above the target size, so decoding stays full-size; at COCO sizes draft could not shrink a 640x480
#   JPEG below 2x of 336 px anyway.
# Processors this does not model (another resample filter, other size rules, padding, another class) go through
# the processor itself.

_TORCH_RESAMPLE = {PILImageResampling.BICUBIC: "bicubic", PILImageResampling.BILINEAR: "bilinear"}


def _fast_processor_classes() -> tuple[type, ...]:
    """CLIP's two processor classes; the torchvision-backed one only where it exists (without torchvision,
    importing `transformers.CLIPImageProcessor` warns and hands back the PIL class)."""
    if not is_torchvision_available():
        return (CLIPImageProcessorPil,)
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor

    return (CLIPImageProcessorPil, CLIPImageProcessor)


_FAST_PROCESSORS = _fast_processor_classes()


@dataclass(frozen=True)
class _ClipTransform:
    """The settings of a CLIP image processor that :func:`preprocess_images` reproduces."""

    shortest_edge: int | None  # resize so the shortest edge is this long (keeping the aspect ratio) ...
    resize_to: tuple[int, int] | None  # ... or to exactly (height, width); both None: no resize
    resample: int  # PIL filter
    mode: str  # the same filter's name in torch.nn.functional.interpolate
    crop: tuple[int, int] | None  # (height, width)
    scale: torch.Tensor  # (3, 1, 1): rescale factor / std, or 1s
    shift: torch.Tensor  # (3, 1, 1): -mean / std, or 0s

    @classmethod
    def of(cls, processor) -> _ClipTransform | None:
        if not isinstance(processor, _FAST_PROCESSORS) or not getattr(processor, "do_convert_rgb", False):
            return None
        if getattr(processor, "do_pad", None):
            return None
        shortest_edge = resize_to = None
        if processor.do_resize:
            size = processor.size
            if processor.resample not in _TORCH_RESAMPLE or size.longest_edge or size.max_height or size.max_pixels:
                return None
            if size.shortest_edge:
                shortest_edge = int(size.shortest_edge)
            elif size.height and size.width:
                resize_to = (int(size.height), int(size.width))
            else:
                return None
        crop = None
        if processor.do_center_crop:
            crop = (int(processor.crop_size.height), int(processor.crop_size.width))
        factor = float(processor.rescale_factor) if processor.do_rescale else 1.0
        mean, std = (processor.image_mean, processor.image_std) if processor.do_normalize else ((0.0,) * 3, (1.0,) * 3)
        std = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
        mean = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
        return cls(
            shortest_edge, resize_to, processor.resample, _TORCH_RESAMPLE.get(processor.resample, "bicubic"), crop,
            (factor / std).float(), (-mean / std).float(),
        )  # fmt: skip

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize, by the processor's own arithmetic."""
        if self.resize_to is not None:
            return self.resize_to
        if self.shortest_edge is None:
            return height, width
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def __call__(self, image: Image.Image) -> torch.Tensor | None:
        """(3, H, W) float32 pixels, or None when the centre crop would need padding (the processor pads)."""
        image = _to_rgb(image)
        width, height = image.size
        new_height, new_width = self.output_size(height, width)
        if new_width > width or new_height > height:
            # Enlarging: torch's weights are coarsest here (up to 2/255 off on photos), so PIL makes the exact
            # horizontal pass and torch only the vertical one: one rounding step can differ, never more than 1/255.
            # Inputs smaller than the output are small, so PIL's pass is cheap.
            image = image.resize((new_width, height), self.resample)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)  # uint8, channels last
        if pixels.shape[-2:] != (new_height, new_width):
            pixels = torch.nn.functional.interpolate(
                pixels, size=(new_height, new_width), mode=self.mode, antialias=True
            )
        if self.crop is not None:
            crop_height, crop_width = self.crop
            top, left = (new_height - crop_height) // 2, (new_width - crop_width) // 2
            if top < 0 or left < 0:
                return None
            pixels = pixels[..., top : top + crop_height, left : left + crop_width]
        # Rescale and normalise: (x / 255 - mean) / std = x * (1 / 255 / std) - mean / std, in place on one contiguous
        # float copy. The resize returns a channels-last view; an out-of-place multiply-add on it took 1.5 ms per
        # 336 px image and left channels-last output that the collator's stack copies slowly; this takes 0.24 ms,
        # and stacking 16 of them half the time (values differ by at most 1.5e-5 from the fused form).
        return pixels[0].to(torch.float32, memory_format=torch.contiguous_format).mul_(self.scale).add_(self.shift)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the processor makes it: an image with transparency is composited onto white first."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    return image.convert("RGB")


def preprocess_images(images: Sequence[Image.Image], image_processor) -> torch.Tensor:
    """``image_processor.preprocess(images, return_tensors="pt")["pixel_values"]``, about 5x faster for CLIP's
    processor (see the measurements above); within 1/255 of its values on photos."""
    transform = _ClipTransform.of(image_processor)
    if transform is not None:
        with one_torch_thread():
            pixels = [transform(image) for image in images]
            if all(p is not None for p in pixels) and len({p.shape for p in pixels}) == 1:
                return pixels[0].unsqueeze(0) if len(pixels) == 1 else torch.stack(pixels)
    return image_processor.preprocess(list(images), return_tensors="pt")["pixel_values"]


# ----------------------------------------------------------------------------------------------------------------
# Whole images


def load_image_from_base64(image: str) -> Image.Image:
    return Image.open(BytesIO(base64.b64decode(image)))


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    """Pad ``pil_img`` to a square, centring it on ``background_color``.

    ``background_color`` is an RGB tuple (LLaVA uses the processor's mean colour). Images in other modes are
    converted to RGB first, so that the colour means the same thing for L, RGBA and P images.
    """
    width, height = pil_img.size
    if width == height:
        return pil_img
    if pil_img.mode != "RGB":
        pil_img = pil_img.convert("RGB")
    side = max(width, height)
    result = Image.new("RGB", (side, side), tuple(background_color))
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def processor_mean_color(image_processor) -> tuple[int, ...]:
    """The processor's normalisation mean as an 8-bit RGB colour (padding with it normalises to zero)."""
    return tuple(int(value * 255) for value in image_processor.image_mean)


def process_images(images: Sequence[Image.Image], image_processor, model_cfg):
    """Turn PIL images into the model's input following ``model_cfg.image_aspect_ratio``.

    - ``pad``: pad each image to a square with the processor's mean colour, then resize/crop;
    - ``anyres``: one (1 + tiles, C, H, W) tensor per image (see :func:`process_anyres_image`);
    - anything else (``square``): the processor's own resize + centre crop.

    Returns an (N, C, H, W) (or (N, 1 + tiles, C, H, W)) tensor when all images have the same shape, else a list.
    """
    aspect_ratio = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect_ratio == "pad":
        color = processor_mean_color(image_processor)
        return preprocess_images([expand2square(image, color) for image in images], image_processor)
    if aspect_ratio == "anyres":
        tensors = [process_anyres_image(image, image_processor, model_cfg.image_grid_pinpoints) for image in images]
        if all(tensor.shape == tensors[0].shape for tensor in tensors):
            return torch.stack(tensors)
        return tensors
    return preprocess_images(images, image_processor)


# ----------------------------------------------------------------------------------------------------------------
# Prompts


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors=None):
    """Token ids of ``prompt`` with ``image_token_index`` wherever ``<image>`` stood.

    Each ``<image>``-separated chunk is tokenised on its own (all chunks in one batched call), as upstream does: the
    first chunk keeps its BOS, later chunks lose theirs when the first chunk starts with BOS. Ids are those of
    upstream's slow tokenizer (a chunk starting with a space gets its extra "▁": see ``llava.tokenization``).
    """
    chunks = encode(tokenizer, prompt.split(DEFAULT_IMAGE_TOKEN)).ids
    keeps_bos = bool(chunks[0]) and chunks[0][0] == tokenizer.bos_token_id
    skip = 1 if keeps_bos else 0
    input_ids = list(chunks[0])
    for chunk in chunks[1:]:
        input_ids.append(image_token_index)
        input_ids.extend(chunk[skip:])
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors}")


def get_model_name_from_path(model_path: str) -> str:
    """The last path component, or ``<run>_checkpoint-N`` for a checkpoint folder."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop generating once every sequence of the batch ends with (or its recent text contains) a keyword."""

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: torch.Tensor):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.start_len = input_ids.shape[1]
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, device=input_ids.device))
        self.max_keyword_len = max((len(ids) for ids in self.keyword_ids), default=0)

    def call_for_batch(self, output_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> bool:
        """Whether one sequence (shape (1, L)) is done."""
        sequence = output_ids[0]
        for ids in self.keyword_ids:
            if len(ids) <= len(sequence) and torch.equal(sequence[-len(ids) :], ids.to(sequence.device)):
                return True
        recent = min(output_ids.shape[1] - self.start_len, self.max_keyword_len)
        if recent <= 0:
            return False
        text = self.tokenizer.batch_decode(output_ids[:, -recent:], skip_special_tokens=True)[0]
        return any(keyword in text for keyword in self.keywords)

    def __call__(self, output_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> bool:
        return all(self.call_for_batch(row.unsqueeze(0), scores) for row in output_ids)
