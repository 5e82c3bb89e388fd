"""What ``llava/eval/run_llava.py`` and ``llava/serve/cli.py`` share: images in, prompt built, generation options.

Kept apart from both scripts so that each step exists once and can be tested without a command line.
"""

from __future__ import annotations

import io
import logging
import re
import urllib.request
from os import PathLike
from typing import Any

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http://", "https://")
URL_TIMEOUT_S = 30

# Upstream's name-based rules, in upstream's order: the first substring found in the lower-cased model name wins.
NAME_TO_CONV_MODE = (
    ("llama-2", "llava_llama_2"),
    ("mistral", "mistral_instruct"),
    ("v1.6-34b", "chatml_direct"),
    ("v1", "llava_v1"),
    ("mpt", "mpt"),
)
FALLBACK_CONV_MODE = "llava_v0"
# A config's model_type says which language model family it is, whatever the folder is called.
MODEL_TYPE_TO_CONV_MODE = {
    "llava_mistral": "mistral_instruct",
    "llava_mpt": "mpt",
}


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu`` (upstream's scripts assume ``cuda``)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_image(image_file: str | PathLike[str]):
    """Open a local image file or an http(s) URL as an RGB PIL image."""
    from PIL import Image

    image_file = str(image_file)
    if image_file.startswith(URL_SCHEMES):
        with urllib.request.urlopen(image_file, timeout=URL_TIMEOUT_S) as response:
            return Image.open(io.BytesIO(response.read())).convert("RGB")
    try:
        return Image.open(image_file).convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image file {image_file} does not exist") from err


def load_images(image_files: list[str]) -> list[Any]:
    return [load_image(image_file) for image_file in image_files]


def infer_conv_mode(model_name: str, config: Any) -> str:
    """The conversation template a model expects: from its config's ``model_type`` when that says, else upstream's
    rules on the model's name (``llama-2``, ``mistral``, ``v1.6-34b``, ``v1``, ``mpt``, otherwise ``llava_v0``)."""
    model_type = getattr(config, "model_type", "")
    if model_type in MODEL_TYPE_TO_CONV_MODE:
        return MODEL_TYPE_TO_CONV_MODE[model_type]
    lowered = model_name.lower()
    for fragment, conv_mode in NAME_TO_CONV_MODE:
        if fragment in lowered:
            return conv_mode
    return FALLBACK_CONV_MODE


def resolve_conv_mode(requested: str | None, model_name: str, config: Any) -> str:
    """``--conv-mode`` when given (warning when it differs from the inferred one, as upstream), else inferred."""
    inferred = infer_conv_mode(model_name, config)
    if requested is None:
        logger.info("conversation mode %s (inferred; pass --conv-mode to choose another)", inferred)
        return inferred
    if requested != inferred:
        logger.warning(
            "the inferred conversation mode is %s, while --conv-mode is %s; using %s", inferred, requested, requested
        )
    return requested


def image_token_text(mm_use_im_start_end: bool) -> str:
    """What stands for one image in a prompt: ``<image>`` or ``<im_start><image><im_end>``."""
    if mm_use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    return DEFAULT_IMAGE_TOKEN


def insert_image_tokens(query: str, mm_use_im_start_end: bool, num_images: int = 1) -> str:
    """Put the image token(s) into ``query`` as upstream: at each ``<image-placeholder>``, or in front of the text.

    Raises ValueError when the number of placeholders does not match the number of images: upstream silently
    ignores the extra images then.
    """
    token = image_token_text(mm_use_im_start_end)
    placeholders = query.count(IMAGE_PLACEHOLDER)
    if placeholders == 0:
        if num_images != 1:
            raise ValueError(
                f"{num_images} images were given but the query has no {IMAGE_PLACEHOLDER}; mark where each image goes "
                f"with {IMAGE_PLACEHOLDER} in --query"
            )
        return token + "\n" + query
    if placeholders != num_images:
        raise ValueError(
            f"the query has {placeholders} {IMAGE_PLACEHOLDER} but {num_images} image(s) were given; use one "
            "placeholder per image"
        )
    return re.sub(re.escape(IMAGE_PLACEHOLDER), token, query)


def images_to_tensor(
    images: list[Any], image_processor: Any, model: torch.nn.Module
) -> torch.Tensor | list[torch.Tensor]:
    """Preprocess PIL images as the model was trained (``image_aspect_ratio``) onto its device and dtype."""
    from llava.mm_utils import process_images

    processed = process_images(images, image_processor, model.config)
    if isinstance(processed, list):
        return [image.to(model.device, dtype=model.dtype) for image in processed]
    return processed.to(model.device, dtype=model.dtype)


def generation_options(
    temperature: float, max_new_tokens: int, top_p: float | None = None, num_beams: int = 1
) -> dict[str, Any]:
    """Keyword arguments for ``generate``: sampling options only when sampling (temperature > 0), as upstream meant;
    passing them to greedy decoding only makes transformers warn."""
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "use_cache": True}
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature)
        if top_p is not None:
            options["top_p"] = top_p
    else:
        options["do_sample"] = False
    return options
