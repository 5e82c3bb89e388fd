"""Ask one question about one or more images: ``python -m llava.eval.run_llava --model-path ... --image-file ...
--query ...`` (upstream's flags; ``--device`` added so that it runs without a GPU).

Works for every kind of model directory ``load_pretrained_model`` reads, including an unmerged LoRA run with
``--model-base``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.inference import (  # noqa: F401  (load_image: upstream defines it here)
    default_device,
    generation_options,
    images_to_tensor,
    insert_image_tokens,
    load_image,
    load_images,
    resolve_conv_mode,
)

logger = logging.getLogger(__name__)


def image_parser(args: argparse.Namespace) -> list[str]:
    """The image files named by ``--image-file``, split on ``--sep``."""
    return args.image_file.split(args.sep)


def build_prompt(query: str, conv_mode: str, mm_use_im_start_end: bool, num_images: int = 1) -> str:
    """The full prompt for one user turn with the image token(s) placed, ending where the assistant answers."""
    from llava.conversation import get_conv_template

    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], insert_image_tokens(query, mm_use_im_start_end, num_images))
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def prepare_inputs(
    prompt: str, images: list[Any], tokenizer: Any, image_processor: Any, model: torch.nn.Module
) -> dict[str, Any]:
    """``input_ids`` (batch of one), ``images`` and ``image_sizes`` as the model's ``forward``/``generate`` take them."""
    from llava.mm_utils import tokenizer_image_token

    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    return {
        "inputs": input_ids.to(model.device),
        "images": images_to_tensor(images, image_processor, model),
        "image_sizes": [image.size for image in images],
    }


def eval_model(args: argparse.Namespace) -> str:
    """Load the model, answer ``args.query`` about ``args.image_file``, print the answer and return it."""
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    model_name = get_model_name_from_path(args.model_path)
    device = getattr(args, "device", None) or default_device()
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, device=device
    )
    if image_processor is None:
        raise ValueError(f"{args.model_path} is a language model without a vision tower; it cannot look at images")

    conv_mode = resolve_conv_mode(args.conv_mode, model_name, model.config)
    args.conv_mode = conv_mode  # upstream records the mode it used on args
    images = load_images(image_parser(args))
    prompt = build_prompt(args.query, conv_mode, getattr(model.config, "mm_use_im_start_end", False), len(images))
    inputs = prepare_inputs(prompt, images, tokenizer, image_processor, model)

    with torch.inference_mode():
        output_ids = model.generate(
            **inputs,
            **generation_options(args.temperature, args.max_new_tokens, args.top_p, args.num_beams),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    answer = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    print(answer)
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer a question about images with a LLaVA model.")
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-file", type=str, required=True, help="image files or URLs, separated by --sep")
    parser.add_argument("--query", type=str, required=True, help="the question; <image-placeholder> marks images")
    parser.add_argument("--conv-mode", type=str, default=None, help="template name; inferred when omitted")
    parser.add_argument("--sep", type=str, default=",")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--device", type=str, default=None, help="cuda or cpu (default: cuda when available)")
    return parser


def main(argv: list[str] | None = None) -> str:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
