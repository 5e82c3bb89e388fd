"""The export's pieces without a model: the chat template against our Conversation for every template, the
streaming shard writer, and what cannot be exported (each refusal naming its flag)."""

from __future__ import annotations

import json
import re
import struct
import weakref
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava.conversation import conv_templates
from llava.export.chat_template import chat_template
from llava.export.shards import INDEX_FILE, PlannedTensor, write_shards
from llava.export.target import target_for

IMAGE_PART = {"type": "image"}
# (messages, add_generation_prompt): the conversations a server sends. An image part is rendered as our CLI and
# run_llava write an image question ("<image>\n" + text); in the first message as Conversation renders an image
# message (for mmtag templates: the <Image> preamble turns).
CASES = {
    "image_question": ([("user", [IMAGE_PART, {"type": "text", "text": "What is this?"}])], True),
    "image_after_text_part": ([("user", [{"type": "text", "text": " What is this? "}, IMAGE_PART])], True),
    "image_as_string": ([("user", "<image>\nWhat is this?")], True),
    "two_rounds": (
        [
            ("user", [IMAGE_PART, {"type": "text", "text": "What is this?"}]),
            ("assistant", "A red square."),
            ("user", "And its colour?"),
        ],
        True,
    ),  # fmt: skip
    "text_only_reply": ([("user", "Hi"), ("assistant", "Hello!")], False),
    "image_in_a_later_message": (
        [("user", "Hi"), ("assistant", "Hello!"), ("user", [IMAGE_PART, {"type": "text", "text": "And this?"}])],
        True,
    ),  # fmt: skip
}
SYSTEM = "You describe images in one short sentence."


def _conversation(name: str, messages, generation: bool, system: str | None = None):
    """Our Conversation for ``messages``: an image part in the first message as an image message (a tuple, what
    the web UI builds), elsewhere as "<image>\\n" + text (what the CLI builds)."""
    conv = conv_templates[name].copy()
    if system is not None:
        conv.system = system
    first = not conv.messages
    for index, (role, content) in enumerate(messages):
        speaker = conv.roles[0] if role == "user" else conv.roles[1]
        if isinstance(content, list):
            text = "".join(part.get("text", "") for part in content)
            images = sum(part["type"] == "image" for part in content)
            if index == 0 and first:
                content = (text, Image.new("RGB", (4, 4)), "Default")
            else:
                content = "<image>\n" * images + text.replace("<image>", "").strip()
        conv.append_message(speaker, content)
    if generation:
        conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def _rendered(tokenizer, name, messages, generation, system=None):
    hf_messages = [{"role": role, "content": content} for role, content in messages]
    if system is not None:
        hf_messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return tokenizer.apply_chat_template(
        hf_messages, chat_template=chat_template(conv_templates[name], name), tokenize=False,
        add_generation_prompt=generation,
    )  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(conv_templates))
def test_chat_template_renders_our_conversation_prompt(tiny_tokenizer, name, case):
    messages, generation = CASES[case]
    try:
        expected = _conversation(name, messages, generation)
    except (TypeError, ValueError) as error:  # upstream's plain cannot render replies; llama_2 starts with the user
        with pytest.raises(Exception, match="cannot render an assistant reply|starts with a non-empty message"):
            _rendered(tiny_tokenizer, name, messages, generation)
        assert isinstance(error, TypeError) and conv_templates[name].sep2 is None
        return
    assert _rendered(tiny_tokenizer, name, messages, generation) == expected


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_minijinja_renders_every_template_as_jinja2_does(tiny_tokenizer, name):
    """TGI renders chat templates with minijinja (Rust), not Jinja2: same prompts, same refusals."""
    from minijinja import Environment

    def raise_exception(message):
        raise ValueError(message)

    environment = Environment(templates={name: chat_template(conv_templates[name], name)})
    environment.add_function("raise_exception", raise_exception)
    for case, (messages, generation) in sorted(CASES.items()):
        hf_messages = [{"role": role, "content": content} for role, content in messages]
        try:
            expected = _rendered(tiny_tokenizer, name, messages, generation)
        except Exception as error:  # noqa: BLE001  (Jinja2's refusal: minijinja must refuse too)
            with pytest.raises(Exception, match=re.escape(str(error))):
                environment.render_template(name, messages=hf_messages, add_generation_prompt=generation)
            continue
        rendered = environment.render_template(name, messages=hf_messages, add_generation_prompt=generation)
        assert rendered == expected, case


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_a_system_message_replaces_the_templates_system_line(tiny_tokenizer, name):
    messages, generation = CASES["image_question"]
    expected = _conversation(name, messages, generation, system=SYSTEM)
    assert _rendered(tiny_tokenizer, name, messages, generation, system=SYSTEM) == expected


def test_the_llava_v1_prompt_exactly(tiny_tokenizer):
    messages, _ = CASES["image_question"]
    assert _rendered(tiny_tokenizer, "llava_v1", messages, True) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nWhat is this? ASSISTANT:"
    )


def test_a_conversation_not_starting_with_the_user_is_refused_where_upstream_refuses(tiny_tokenizer):
    with pytest.raises(Exception, match="starts with a non-empty message from the user"):
        _rendered(tiny_tokenizer, "llama_2", [("assistant", "Hello")], True)
    with pytest.raises(Exception, match="roles are user and assistant"):
        _rendered(tiny_tokenizer, "llava_v1", [("tool", "{}")], True)


# ----------------------------------------------------------------------------------------------------------------
# Shards


def _planned(tensors: dict[str, torch.Tensor], alive: list | None = None) -> list[PlannedTensor]:
    def producer(name):
        def produce():
            value = tensors[name].clone()
            if alive is not None:  # refcounting frees a written tensor at once; no cycle collection needed
                alive.append(sum(ref() is not None for ref in refs))
                refs.append(weakref.ref(value))
            return value

        return produce

    refs: list = []
    return [PlannedTensor(name, value.dtype, tuple(value.shape), producer(name)) for name, value in tensors.items()]


def test_shards_are_cut_by_size_and_indexed_and_read_back_exactly(tmp_path):
    from safetensors import safe_open

    generator = torch.Generator().manual_seed(0)
    tensors = {f"layer.{index}.weight": torch.randn(16, 16, generator=generator) for index in range(5)}
    tensors["scale"] = torch.tensor(3.5, dtype=torch.bfloat16)
    tensors["ids"] = torch.arange(7)
    files = write_shards(_planned(tensors), tmp_path, max_shard_bytes=2 * 16 * 16 * 4)
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + [INDEX_FILE]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 5 * 16 * 16 * 4 + 2 + 7 * 8
    assert index["weight_map"] == {
        "ids": files[2], "layer.0.weight": files[0], "layer.1.weight": files[0], "layer.2.weight": files[1],
        "layer.3.weight": files[1], "layer.4.weight": files[2], "scale": files[2],
    }  # fmt: skip
    for name, file in index["weight_map"].items():
        with safe_open(tmp_path / file, framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            assert torch.equal(handle.get_tensor(name), tensors[name]), name
    header_length = struct.unpack("<Q", (tmp_path / files[0]).read_bytes()[:8])[0]
    assert header_length % 8 == 0


def test_one_shard_is_model_safetensors_without_an_index(tmp_path):
    assert write_shards(_planned({"a": torch.ones(3)}), tmp_path, max_shard_bytes=10**9) == ["model.safetensors"]


def test_tensors_are_produced_one_at_a_time(tmp_path):
    """The writer keeps no produced tensor once it is written: at every production none of the earlier is alive."""
    alive: list[int] = []
    tensors = {f"t{index}": torch.full((64, 64), float(index)) for index in range(6)}
    write_shards(_planned(tensors, alive), tmp_path, max_shard_bytes=3 * 64 * 64 * 4)
    assert alive == [0] * 6


def test_a_tensor_other_than_planned_is_an_error(tmp_path):
    planned = [PlannedTensor("a", torch.float16, (2,), lambda: torch.ones(2))]
    with pytest.raises(ValueError, match="a: produced torch.float32 \\(2,\\), planned torch.float16 \\(2,\\)"):
        write_shards(planned, tmp_path, max_shard_bytes=100)


# ----------------------------------------------------------------------------------------------------------------
# What cannot be exported

LLAVA_15 = dict(
    model_type="llava_llama", mm_projector_type="mlp2x_gelu", mm_vision_select_feature="patch",
    mm_use_im_start_end=False, image_aspect_ratio="pad", mm_patch_merge_type="flat", mm_vision_select_layer=-2,
    mm_vision_tower="openai/clip-vit-large-patch14-336", image_grid_pinpoints=None,
)  # fmt: skip
CLIP_336 = SimpleNamespace(model_type="clip_vision_model", image_size=336, patch_size=14)


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(mm_projector_type="linear"), "--mm_projector_type linear: transformers' Llava has a two-layer GELU"),
        (dict(mm_projector_type="mlp3x_gelu"), "--mm_projector_type mlp3x_gelu"),
        (dict(mm_use_im_start_end=True), "--mm_use_im_start_end True"),
        (dict(mm_vision_select_feature="cls"), "--mm_vision_select_feature cls"),
        (dict(model_type="llava_mpt"), "model_type 'llava_mpt'"),
        (dict(image_aspect_ratio="anyres", image_grid_pinpoints=[[336, 672]]), "--mm_patch_merge_type flat"),
        (dict(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad"), "without --image_grid_pinpoints"),
        (dict(mm_patch_merge_type="spatial_unpad"), "--mm_patch_merge_type spatial_unpad without --image_aspect"),
    ],
)
def test_what_transformers_llava_cannot_hold_is_refused_naming_the_flag(changes, expected):
    with pytest.raises(ValueError, match="cannot be exported to transformers' Llava") as caught:
        target_for(SimpleNamespace(**{**LLAVA_15, **changes}), CLIP_336)
    assert expected in str(caught.value)


def test_every_reason_is_given_at_once():
    config = SimpleNamespace(**{**LLAVA_15, "mm_projector_type": "linear", "mm_use_im_start_end": True})
    with pytest.raises(ValueError) as caught:
        target_for(config, CLIP_336)
    assert "--mm_projector_type linear" in str(caught.value) and "--mm_use_im_start_end True" in str(caught.value)


@pytest.mark.parametrize(
    "aspect, architecture, image_processor",
    [
        ("square", "LlavaForConditionalGeneration", "CLIPImageProcessor"),
        ("pad", "LlavaForConditionalGeneration", "LlavaImageProcessor"),
        ("anyres", "LlavaNextForConditionalGeneration", "LlavaNextImageProcessor"),
    ],
)
def test_the_target_of_each_aspect_ratio(aspect, architecture, image_processor):
    changes = dict(image_aspect_ratio=aspect)
    if aspect == "anyres":
        changes.update(mm_patch_merge_type="spatial_unpad", image_grid_pinpoints="[[336, 672], [672, 336]]")
    target = target_for(SimpleNamespace(**{**LLAVA_15, **changes}), CLIP_336)
    assert (target.architecture, target.image_processor_type) == (architecture, image_processor)
    # 24 x 24 patches at 336 px (CLS dropped by the "default" strategy, as mm_vision_select_feature patch).
    assert target.features_per_image == 576 and target.select_strategy == "default"
    if aspect == "anyres":
        assert target.grid_pinpoints == [[672, 336], [336, 672]]  # (height, width), transformers' order
