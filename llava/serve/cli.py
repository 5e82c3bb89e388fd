"""Chat about one image in the terminal: ``python -m llava.serve.cli --model-path ... --image-file ...``.

Upstream's flags. The answer streams as it is generated; an empty line or end of input ends the chat. The image is
attached to the first message only, as upstream.
"""

from __future__ import annotations

import argparse
import logging

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.inference import (
    default_device,
    generation_options,
    image_token_text,
    images_to_tensor,
    load_image,
    resolve_conv_mode,
)

logger = logging.getLogger(__name__)

EXIT_MESSAGE = "exit..."
# MPT's template names its roles in the prompt differently from what a person should be shown (as upstream).
MPT_DISPLAY_ROLES = ("user", "assistant")


def chat(args: argparse.Namespace) -> list[str]:
    """Run the interactive loop on stdin/stdout; return the assistant's answers (for callers and tests)."""
    from transformers import TextStreamer

    from llava.conversation import get_conv_template
    from llava.mm_utils import get_model_name_from_path, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, args.load_8bit, args.load_4bit, device=args.device
    )
    if image_processor is None:
        raise ValueError(f"{args.model_path} is a language model without a vision tower; it cannot look at images")
    conv_mode = resolve_conv_mode(args.conv_mode, model_name, model.config)
    conv = get_conv_template(conv_mode)
    display_roles = MPT_DISPLAY_ROLES if conv_mode == "mpt" else conv.roles

    image = load_image(args.image_file)
    image_size = image.size
    image_tensor = images_to_tensor([image], image_processor, model)
    image_prefix: str | None = image_token_text(getattr(model.config, "mm_use_im_start_end", False)) + "\n"

    answers = []
    while True:
        try:
            message = input(f"{display_roles[0]}: ")
        except EOFError:
            message = ""
        if not message:
            print(EXIT_MESSAGE)
            break
        print(f"{display_roles[1]}: ", end="", flush=True)
        if image_prefix is not None:
            message, image_prefix = image_prefix + message, None
        conv.append_message(conv.roles[0], message)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()

        input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        with torch.inference_mode():
            output_ids = model.generate(
                input_ids.to(model.device),
                images=image_tensor,
                image_sizes=[image_size],
                streamer=streamer,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                **generation_options(args.temperature, args.max_new_tokens),
            )
        # Special tokens are dropped: upstream keeps the closing `</s>`, and the template then adds its own separator
        # after it, so every later prompt carried a doubled `</s></s>`.
        answer = tokenizer.decode(output_ids[0], skip_special_tokens=True).strip()
        conv.messages[-1][-1] = answer
        answers.append(answer)
        if args.debug:
            print("\n", {"prompt": prompt, "outputs": answer}, "\n")
    return answers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat with a LLaVA model about an image.")
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-file", type=str, required=True)
    parser.add_argument("--device", type=str, default=default_device(), help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--conv-mode", type=str, default=None)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--debug", action="store_true")
    return parser


def main(args: argparse.Namespace | None = None) -> list[str]:
    """Upstream's entry point: ``main(args)`` with parsed flags (read from the command line when omitted)."""
    if args is None:
        args = build_parser().parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return chat(args)


if __name__ == "__main__":
    main()
