"""Conversation templates: how a dialogue is rendered into the prompt string a LLaVA model is trained on.

The template strings, separators and the keys of ``conv_templates`` are upstream LLaVA's, so prompts rendered here
are byte-identical to upstream's. Templates are never mutated by the package: take a fresh copy with
:func:`get_conv_template` (or ``conv_templates[name].copy()``) and pass it to the code that needs it.
"""

from __future__ import annotations

import base64
import dataclasses
from enum import Enum, auto
from io import BytesIO
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN

# Upstream's gray for padding chat images to a square ("Pad" mode of the web demo).
CHAT_PAD_COLOR = (122, 116, 104)


class SeparatorStyle(Enum):
    """How turns are joined into a prompt."""

    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


def _message_text(message: Any) -> str:
    """A message is a string, or ``(text, image, image_process_mode)`` when it carries an image."""
    return message[0] if isinstance(message, tuple) else message


@dataclasses.dataclass
class Conversation:
    """A dialogue plus the template that renders it (upstream's fields and methods)."""

    system: str
    roles: tuple[str, str] | list[str]
    messages: list[list[Any]] | tuple
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"

    skip_next: bool = False

    # ------------------------------------------------------------------------------------------------------------
    # Rendering

    def get_prompt(self) -> str:
        """The prompt string for the messages so far; an empty last message leaves the role open for generation."""
        messages = self._messages_with_image_prefix()
        render = {
            SeparatorStyle.SINGLE: self._render_single,
            SeparatorStyle.TWO: self._render_two,
            SeparatorStyle.MPT: self._render_mpt,
            SeparatorStyle.LLAMA_2: self._render_llama_2,
            SeparatorStyle.PLAIN: self._render_plain,
        }.get(self.sep_style)
        if render is None:
            raise ValueError(f"Invalid style: {self.sep_style}")
        return render(messages)

    def _messages_with_image_prefix(self) -> list:
        """When the first message carries an image, put the image token first in it (or in an mmtag preamble)."""
        messages = list(self.messages)
        if not messages or not isinstance(messages[0][1], tuple):
            return messages
        role, message = messages[0][0], messages[0][1]
        text = message[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        if "mmtag" in self.version:
            messages[0] = (role, text)
            messages.insert(0, (self.roles[0], "<Image><image></Image>"))
            messages.insert(1, (self.roles[1], "Received."))
        else:
            messages[0] = (role, DEFAULT_IMAGE_TOKEN + "\n" + text)
        return messages

    def _render_single(self, messages: list) -> str:
        parts = [self.system + self.sep]
        for role, message in messages:
            parts.append(f"{role}: {_message_text(message)}{self.sep}" if message else f"{role}:")
        return "".join(parts)

    def _render_two(self, messages: list) -> str:
        separators = (self.sep, self.sep2)
        parts = [self.system + self.sep]
        for index, (role, message) in enumerate(messages):
            if message:
                parts.append(f"{role}: {_message_text(message)}{separators[index % 2]}")
            else:
                parts.append(f"{role}:")
        return "".join(parts)

    def _render_mpt(self, messages: list) -> str:
        parts = [self.system + self.sep]
        for role, message in messages:
            parts.append(role + _message_text(message) + self.sep if message else role)
        return "".join(parts)

    def _render_llama_2(self, messages: list) -> str:
        parts = []
        for index, (role, message) in enumerate(messages):
            if index == 0 and (not message or role != self.roles[0]):
                raise ValueError("llama_2 prompts must start with a non-empty message from the user")
            if not message:
                continue
            text = _message_text(message)
            if index == 0 and self.system:
                text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n" + text
            if index % 2 == 0:
                parts.append(f"{self.sep}[INST] {text} [/INST]")
            else:
                parts.append(f" {text} {self.sep2}")
        # Every user turn is preceded by sep (<s>); the very first one is not (str.lstrip semantics, as upstream).
        return "".join(parts).lstrip(self.sep)

    def _render_plain(self, messages: list) -> str:
        separators = (self.sep, self.sep2)
        parts = [self.system]
        for index, (_, message) in enumerate(messages):
            if message:
                parts.append(_message_text(message) + separators[index % 2])
        return "".join(parts)

    # ------------------------------------------------------------------------------------------------------------
    # Building and inspecting

    def append_message(self, role: str, message: Any) -> None:
        self.messages.append([role, message])

    def process_image(
        self,
        image,
        image_process_mode: str,
        return_pil: bool = False,
        image_format: str = "PNG",
        max_len: int = 1344,
        min_len: int = 672,
    ):
        """Prepare a chat image: pad/resize by mode, cap its size, return PIL or base64 (as upstream's web demo)."""
        from llava.mm_utils import expand2square

        if image_process_mode == "Pad":
            image = expand2square(image, CHAT_PAD_COLOR)
        elif image_process_mode == "Resize":
            image = image.resize((336, 336))
        elif image_process_mode not in ("Default", "Crop"):
            raise ValueError(f"Invalid image_process_mode: {image_process_mode}")
        if max(image.size) > max_len:
            long_side, short_side = max(image.size), min(image.size)
            aspect_ratio = long_side / short_side
            shortest = int(min(max_len / aspect_ratio, min_len, short_side))
            longest = int(shortest * aspect_ratio)
            width, height = image.size
            image = image.resize((shortest, longest) if height > width else (longest, shortest))
        if return_pil:
            return image
        buffer = BytesIO()
        image.save(buffer, format=image_format)
        return base64.b64encode(buffer.getvalue()).decode()

    def get_images(self, return_pil: bool = False) -> list:
        images = []
        for index, (_, message) in enumerate(self.messages[self.offset :]):
            if index % 2 == 0 and isinstance(message, tuple):
                _, image, mode = message
                images.append(self.process_image(image, mode, return_pil=return_pil))
        return images

    def to_gradio_chatbot(self) -> list[list]:
        chat: list[list] = []
        for index, (_, message) in enumerate(self.messages[self.offset :]):
            if index % 2 == 1:
                chat[-1][-1] = message
                continue
            if isinstance(message, tuple):
                text, image, _ = message
                encoded = self.process_image(image, "Default", return_pil=False, image_format="JPEG")
                html = f'<img src="data:image/jpeg;base64,{encoded}" alt="user upload image" />'
                message = html + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
            chat.append([message, None])
        return chat

    def copy(self) -> Conversation:
        """An independent copy: messages can be appended to it without touching the template. ``skip_next`` starts
        False again, as in upstream's copy (its gradio server relies on it)."""
        return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages], skip_next=False)

    def dict(self) -> dict:
        messages = self.messages
        if self.get_images():
            messages = [[role, _message_text(message)] for role, message in self.messages]
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


# ----------------------------------------------------------------------------------------------------------------
# Templates (upstream's strings)

_VICUNA_V0_EXAMPLE = (
    ("Human", "What are the key differences between renewable and non-renewable energy sources?"),
    (
        "Assistant",
        "Renewable energy sources are those that can be replenished naturally in a relatively "
        "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
        "Non-renewable energy sources, on the other hand, are finite and will eventually be "
        "depleted, such as coal, oil, and natural gas. Here are some key differences between "
        "renewable and non-renewable energy sources:\n"
        "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
        "energy sources are finite and will eventually run out.\n"
        "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
        "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
        "and other negative effects.\n"
        "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
        "have lower operational costs than non-renewable sources.\n"
        "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
        "locations than non-renewable sources.\n"
        "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
        "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
        "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
        "non-renewable sources are not, and their depletion can lead to economic and social instability.\n",
    ),
)

_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, and assist the user with a "
    "variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

conv_vicuna_v0 = Conversation(
    system=_HUMAN_SYSTEM,
    roles=("Human", "Assistant"),
    messages=_VICUNA_V0_EXAMPLE,
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)
conv_vicuna_v1 = Conversation(
    system=_USER_SYSTEM,
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)
conv_llama_2 = Conversation(
    system=_LLAMA_2_SYSTEM,
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)
conv_llava_llama_2 = dataclasses.replace(conv_llama_2, system=_LLAVA_LLAMA_2_SYSTEM)
conv_mpt = Conversation(
    system="<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.",
    roles=_CHATML_ROLES,
    version="mpt",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)
conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
)
conv_llava_v0 = Conversation(
    system=_HUMAN_SYSTEM,
    roles=("Human", "Assistant"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)
conv_llava_v0_mmtag = dataclasses.replace(conv_llava_v0, system=_MMTAG_SYSTEM, version="v0_mmtag")
conv_llava_v1 = dataclasses.replace(conv_vicuna_v1, system=_HUMAN_SYSTEM)
conv_llava_v1_mmtag = dataclasses.replace(conv_vicuna_v1, system=_MMTAG_SYSTEM, version="v1_mmtag")
conv_mistral_instruct = dataclasses.replace(conv_llama_2, system="", sep="")
conv_chatml_direct = dataclasses.replace(conv_mpt, system="<|im_start|>system\nAnswer the questions.")

default_conversation = conv_vicuna_v1
conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
}


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of template ``name``; unknown names are an error (upstream silently used vicuna_v1, see
    docs/upstream_differences.md)."""
    try:
        return conv_templates[name].copy()
    except KeyError:
        valid = ", ".join(sorted(conv_templates))
        raise ValueError(f"Unknown conversation template {name!r}. Valid names: {valid}.") from None


# --version values that upstream's train() handles itself and trains with its default template, vicuna_v1
# ("v0" is also a template key, but upstream's train() never uses that template for it).
DEFAULT_TRAINING_TEMPLATE = "vicuna_v1"
VERSIONS_WITH_DEFAULT_TEMPLATE = ("v0", "v0.5")


def template_name(version: str) -> str:
    """The conversation template training's ``--version`` selects: ``v0`` and ``v0.5`` use vicuna_v1, as upstream;
    any other value names a template itself."""
    return DEFAULT_TRAINING_TEMPLATE if version in VERSIONS_WITH_DEFAULT_TEMPLATE else version
