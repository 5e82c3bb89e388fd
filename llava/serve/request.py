"""A generation request as upstream's clients send it to ``/worker_generate_stream``, checked.

Every problem a client can cause is a :class:`BadRequest` whose message says what to send instead; the worker
answers it as an error chunk and goes on serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN

# Upstream's cap on max_new_tokens (it silently lowers larger values; here they are refused).
MAX_NEW_TOKENS_LIMIT = 1024
DEFAULT_MAX_NEW_TOKENS = 256
# Upstream samples above this temperature and decodes greedily at or below it.
GREEDY_TEMPERATURE = 0.001
# The largest image accepted, in pixels (8192 x 8192). PIL's own guard starts at 89M pixels and only warns below
# 179M: a small compressed file can claim a size whose decoding takes gigabytes (a decompression bomb).
MAX_IMAGE_PIXELS = 8192 * 8192


class BadRequest(ValueError):
    """A request the worker cannot serve; the message is meant for the person who sent it."""


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prompt: str
    images: list[str]  # base64
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: str | None

    @property
    def do_sample(self) -> bool:
        return self.temperature > GREEDY_TEMPERATURE


def parse_request(params: Any, model_names: list[str]) -> GenerateRequest:
    """Check upstream's JSON body (``model``, ``prompt``, ``images``, ``temperature``, ``top_p``,
    ``max_new_tokens``, ``stop``). Without ``model`` a worker of one model serves that one."""
    if not isinstance(params, dict):
        raise BadRequest("the request body must be a JSON object with at least 'prompt'")
    model = params.get("model")
    if model is None and len(model_names) == 1:
        model = model_names[0]
    if model not in model_names:
        raise BadRequest(f"this worker does not serve model {model!r}; it serves {', '.join(model_names)}")
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("the prompt is empty: send the conversation rendered with the model's template")
    images = params.get("images") or []
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise BadRequest("'images' must be a list of base64-encoded image files")
    if len(images) != prompt.count(DEFAULT_IMAGE_TOKEN):
        raise BadRequest(
            f"the prompt has {prompt.count(DEFAULT_IMAGE_TOKEN)} {DEFAULT_IMAGE_TOKEN} token(s) but {len(images)} "
            f"image(s) were sent: send one image per {DEFAULT_IMAGE_TOKEN}"
        )
    temperature = _number(params, "temperature", 1.0)
    top_p = _number(params, "top_p", 1.0)
    if temperature < 0:
        raise BadRequest(f"temperature must be 0 (greedy) or more, not {temperature}")
    if not 0 < top_p <= 1:
        raise BadRequest(f"top_p must be in (0, 1], not {top_p}")
    max_new_tokens = params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(max_new_tokens, float) and max_new_tokens.is_integer():
        max_new_tokens = int(max_new_tokens)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise BadRequest(
            f"max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS_LIMIT}, not {max_new_tokens!r}"
        )
    if max_new_tokens > MAX_NEW_TOKENS_LIMIT:
        raise BadRequest(f"max_new_tokens {max_new_tokens} is over this worker's limit of {MAX_NEW_TOKENS_LIMIT}")
    stop = params.get("stop")
    if stop is not None and not isinstance(stop, str):
        raise BadRequest(f"'stop' must be a string, not {stop!r}")
    return GenerateRequest(model, prompt, images, temperature, top_p, max_new_tokens, stop or None)


def _number(params: dict, key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{key} must be a number, not {value!r}")
    return float(value)


def decode_image(data: str, index: int):
    """The ``index``-th image of a request as an RGB PIL image; refuses what is not an image or is too large to
    decode (checked from the header, before any pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    where = f"image {index + 1}"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest(f"{where} is not valid base64 ({err}): send each image file base64-encoded") from None
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise BadRequest(
            f"{where} is far too large to decode; send an image of at most {MAX_IMAGE_PIXELS} pixels"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise BadRequest(f"{where} is not an image file PIL can read ({err})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadRequest(
            f"{where} is {width}x{height} pixels, over this worker's limit of {MAX_IMAGE_PIXELS} pixels; send a "
            "smaller image (the model sees it at its vision tower's resolution anyway)"
        )
    try:
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise BadRequest(f"{where} could not be decoded ({err}): the file is truncated or corrupt") from None
