"""Image and prompt helpers shared by training, the model and inference (upstream's names and semantics).

This module holds the ONE implementation of each: ``expand2square``, the anyres grid arithmetic, image
processing for ``image_aspect_ratio`` square / pad / anyres, and ``tokenizer_image_token``.
"""

from __future__ import annotations

import ast
import base64
import math
from collections.abc import Sequence
from io import BytesIO

import torch
from PIL import Image
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.tokenization import encode

Resolution = tuple[int, int]  # (width, height)


# ----------------------------------------------------------------------------------------------------------------
# anyres grid arithmetic


def _parse_pinpoints(grid_pinpoints) -> list[Resolution]:
    """Grid pinpoints come as a list or as its string literal (how they are stored in config.json / on the CLI)."""
    if isinstance(grid_pinpoints, str):
        grid_pinpoints = ast.literal_eval(grid_pinpoints)
    return [tuple(resolution) for resolution in grid_pinpoints]


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
    canvas.paste(image.resize((new_width, new_height)), ((target_width - new_width) // 2, (target_height - new_height) // 2))
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
    return processor.preprocess(views, return_tensors="pt")["pixel_values"]


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
        padded = [expand2square(image, color) for image in images]
        return image_processor.preprocess(padded, return_tensors="pt")["pixel_values"]
    if aspect_ratio == "anyres":
        tensors = [process_anyres_image(image, image_processor, model_cfg.image_grid_pinpoints) for image in images]
        if all(tensor.shape == tensors[0].shape for tensor in tensors):
            return torch.stack(tensors)
        return tensors
    return image_processor(list(images), return_tensors="pt")["pixel_values"]


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
