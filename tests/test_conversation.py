"""Every conversation template renders exactly upstream LLaVA's prompt strings.

The expected strings were produced once by upstream's own `llava/conversation.py` (commit c121f04) for the
conversation built in `_render` and are kept here as literals.
"""

from __future__ import annotations

import pytest
from PIL import Image

from llava import conversation as conversation_lib
from llava.conversation import SeparatorStyle, conv_templates, get_conv_template

UPSTREAM_KEYS = {
    "default", "v0", "v1", "vicuna_v1", "llama_2", "mistral_instruct", "chatml_direct", "mistral_direct", "plain",
    "v0_plain", "llava_v0", "v0_mmtag", "llava_v1", "v1_mmtag", "llava_llama_2", "mpt",
}  # fmt: skip

EXPECTED = {
    (
        "default",
        False,
    ): "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.###Human: What are the key differences between renewable and non-renewable energy sources?###Assistant: Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences between renewable and non-renewable energy sources:\n1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy sources are finite and will eventually run out.\n2. Environmental impact: Renewable energy sources have a much lower environmental impact than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have lower operational costs than non-renewable sources.\n4. Reliability: Renewable energy sources are often more reliable and can be used in more remote locations than non-renewable sources.\n5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different situations and needs, while non-renewable sources are more rigid and inflexible.\n6. Sustainability: Renewable energy sources are more sustainable over the long term, while non-renewable sources are not, and their depletion can lead to economic and social instability.\n###Human: What is in the picture?###Assistant: A red square.###Human: And its size?###Assistant:",
    (
        "default",
        True,
    ): "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.###Human: What are the key differences between renewable and non-renewable energy sources?###Assistant: Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences between renewable and non-renewable energy sources:\n1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy sources are finite and will eventually run out.\n2. Environmental impact: Renewable energy sources have a much lower environmental impact than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have lower operational costs than non-renewable sources.\n4. Reliability: Renewable energy sources are often more reliable and can be used in more remote locations than non-renewable sources.\n5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different situations and needs, while non-renewable sources are more rigid and inflexible.\n6. Sustainability: Renewable energy sources are more sustainable over the long term, while non-renewable sources are not, and their depletion can lead to economic and social instability.\n###Human: What is in the picture?\n<image>###Assistant: A red square.###Human: And its size?###Assistant:",
    (
        "v0",
        False,
    ): "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.###Human: What are the key differences between renewable and non-renewable energy sources?###Assistant: Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences between renewable and non-renewable energy sources:\n1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy sources are finite and will eventually run out.\n2. Environmental impact: Renewable energy sources have a much lower environmental impact than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have lower operational costs than non-renewable sources.\n4. Reliability: Renewable energy sources are often more reliable and can be used in more remote locations than non-renewable sources.\n5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different situations and needs, while non-renewable sources are more rigid and inflexible.\n6. Sustainability: Renewable energy sources are more sustainable over the long term, while non-renewable sources are not, and their depletion can lead to economic and social instability.\n###Human: What is in the picture?###Assistant: A red square.###Human: And its size?###Assistant:",
    (
        "v0",
        True,
    ): "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.###Human: What are the key differences between renewable and non-renewable energy sources?###Assistant: Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences between renewable and non-renewable energy sources:\n1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy sources are finite and will eventually run out.\n2. Environmental impact: Renewable energy sources have a much lower environmental impact than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have lower operational costs than non-renewable sources.\n4. Reliability: Renewable energy sources are often more reliable and can be used in more remote locations than non-renewable sources.\n5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different situations and needs, while non-renewable sources are more rigid and inflexible.\n6. Sustainability: Renewable energy sources are more sustainable over the long term, while non-renewable sources are not, and their depletion can lead to economic and social instability.\n###Human: What is in the picture?\n<image>###Assistant: A red square.###Human: And its size?###Assistant:",
    (
        "v1",
        False,
    ): "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: What is in the picture? ASSISTANT: A red square.</s>USER: And its size? ASSISTANT:",
    (
        "v1",
        True,
    ): "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is in the picture? ASSISTANT: A red square.</s>USER: And its size? ASSISTANT:",
    (
        "vicuna_v1",
        False,
    ): "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: What is in the picture? ASSISTANT: A red square.</s>USER: And its size? ASSISTANT:",
    (
        "vicuna_v1",
        True,
    ): "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is in the picture? ASSISTANT: A red square.</s>USER: And its size? ASSISTANT:",
    (
        "llama_2",
        False,
    ): "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.\n<</SYS>>\n\nWhat is in the picture? [/INST] A red square. </s><s>[INST] And its size? [/INST]",
    (
        "llama_2",
        True,
    ): "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.\n<</SYS>>\n\n<image>\nWhat is in the picture? [/INST] A red square. </s><s>[INST] And its size? [/INST]",
    (
        "mistral_instruct",
        False,
    ): "[INST] What is in the picture? [/INST] A red square. </s>[INST] And its size? [/INST]",
    (
        "mistral_instruct",
        True,
    ): "[INST] <image>\nWhat is in the picture? [/INST] A red square. </s>[INST] And its size? [/INST]",
    (
        "chatml_direct",
        False,
    ): "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nWhat is in the picture?<|im_end|><|im_start|>assistant\nA red square.<|im_end|><|im_start|>user\nAnd its size?<|im_end|><|im_start|>assistant\n",
    (
        "chatml_direct",
        True,
    ): "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is in the picture?<|im_end|><|im_start|>assistant\nA red square.<|im_end|><|im_start|>user\nAnd its size?<|im_end|><|im_start|>assistant\n",
    (
        "mistral_direct",
        False,
    ): "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nWhat is in the picture?<|im_end|><|im_start|>assistant\nA red square.<|im_end|><|im_start|>user\nAnd its size?<|im_end|><|im_start|>assistant\n",
    (
        "mistral_direct",
        True,
    ): "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is in the picture?<|im_end|><|im_start|>assistant\nA red square.<|im_end|><|im_start|>user\nAnd its size?<|im_end|><|im_start|>assistant\n",
    ("plain", False): "Describe.\n",
    ("plain", True): "<image>\nDescribe.\n",
    ("v0_plain", False): "Describe.\n",
    ("v0_plain", True): "<image>\nDescribe.\n",
    (
        "llava_v0",
        False,
    ): "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.###Human: What is in the picture?###Assistant: A red square.###Human: And its size?###Assistant:",
    (
        "llava_v0",
        True,
    ): "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.###Human: <image>\nWhat is in the picture?###Assistant: A red square.###Human: And its size?###Assistant:",
    (
        "v0_mmtag",
        False,
    ): "A chat between a curious user and an artificial intelligence assistant. The assistant is able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.The visual content will be provided with the following format: <Image>visual content</Image>.###Human: What is in the picture?###Assistant: A red square.###Human: And its size?###Assistant:",
    (
        "v0_mmtag",
        True,
    ): "A chat between a curious user and an artificial intelligence assistant. The assistant is able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.The visual content will be provided with the following format: <Image>visual content</Image>.###Human: <Image><image></Image>###Assistant: Received.###Human: What is in the picture?###Assistant: A red square.###Human: And its size?###Assistant:",
    (
        "llava_v1",
        False,
    ): "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. USER: What is in the picture? ASSISTANT: A red square.</s>USER: And its size? ASSISTANT:",
    (
        "llava_v1",
        True,
    ): "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat is in the picture? ASSISTANT: A red square.</s>USER: And its size? ASSISTANT:",
    (
        "v1_mmtag",
        False,
    ): "A chat between a curious user and an artificial intelligence assistant. The assistant is able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.The visual content will be provided with the following format: <Image>visual content</Image>. USER: What is in the picture? ASSISTANT: A red square.</s>USER: And its size? ASSISTANT:",
    (
        "v1_mmtag",
        True,
    ): "A chat between a curious user and an artificial intelligence assistant. The assistant is able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.The visual content will be provided with the following format: <Image>visual content</Image>. USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is in the picture? ASSISTANT: A red square.</s>USER: And its size? ASSISTANT:",
    (
        "llava_llama_2",
        False,
    ): "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.\n<</SYS>>\n\nWhat is in the picture? [/INST] A red square. </s><s>[INST] And its size? [/INST]",
    (
        "llava_llama_2",
        True,
    ): "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.\n<</SYS>>\n\n<image>\nWhat is in the picture? [/INST] A red square. </s><s>[INST] And its size? [/INST]",
    (
        "mpt",
        False,
    ): "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.<|im_end|><|im_start|>user\nWhat is in the picture?<|im_end|><|im_start|>assistant\nA red square.<|im_end|><|im_start|>user\nAnd its size?<|im_end|><|im_start|>assistant\n",
    (
        "mpt",
        True,
    ): "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.<|im_end|><|im_start|>user\n<image>\nWhat is in the picture?<|im_end|><|im_start|>assistant\nA red square.<|im_end|><|im_start|>user\nAnd its size?<|im_end|><|im_start|>assistant\n",
}


def _render(name: str, with_image: bool) -> str:
    conv = get_conv_template(name)
    if "plain" in name:
        messages = ["Describe.", None]
    else:
        messages = ["What is in the picture?", "A red square.", "And its size?", None]
    for index, message in enumerate(messages):
        if index == 0 and with_image:
            # The (text, image, mode) form used by the serving code; <image> is moved to the front.
            message = (message + "\n<image>", Image.new("RGB", (8, 8)), "Default")
        conv.append_message(conv.roles[index % 2], message)
    return conv.get_prompt()


def test_template_keys_are_upstreams():
    assert set(conv_templates) == UPSTREAM_KEYS
    assert conversation_lib.default_conversation is conv_templates["vicuna_v1"]


@pytest.mark.parametrize(("name", "with_image"), sorted(EXPECTED))
def test_prompt_matches_upstream(name, with_image):
    assert _render(name, with_image) == EXPECTED[(name, with_image)]


def test_get_conv_template_returns_an_independent_copy():
    conv = get_conv_template("llava_v1")
    conv.append_message("USER", "hi")
    assert conv_templates["llava_v1"].messages == ()
    assert get_conv_template("llava_v1").messages == []


def test_unknown_template_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown conversation template 'vicuna_v2'") as error:
        get_conv_template("vicuna_v2")
    for name in UPSTREAM_KEYS:
        assert name in str(error.value)


def test_llama_2_needs_a_user_first():
    conv = get_conv_template("llama_2")
    conv.append_message("ASSISTANT", "hello")
    with pytest.raises(ValueError, match="start with a non-empty message from the user"):
        conv.get_prompt()


def test_images_and_dict():
    conv = get_conv_template("llava_v1")
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    conv.append_message("USER", ("What? <image>", image, "Pad"))
    conv.append_message("ASSISTANT", "Red.")
    [padded] = conv.get_images(return_pil=True)
    assert padded.size == (40, 40)
    # Pad mode fills with upstream's gray around the centred image.
    assert padded.getpixel((0, 0)) == conversation_lib.CHAT_PAD_COLOR
    assert padded.getpixel((20, 20)) == (255, 0, 0)
    assert conv.dict()["messages"] == [["USER", "What? <image>"], ["ASSISTANT", "Red."]]
    chat = conv.to_gradio_chatbot()
    assert chat[0][0].startswith('<img src="data:image/jpeg;base64,') and chat[0][0].endswith("What?")
    assert chat[0][1] == "Red."


def test_process_image_caps_long_side():
    conv = get_conv_template("llava_v1")
    image = conv.process_image(Image.new("RGB", (3000, 1000)), "Default", return_pil=True)
    assert image.size == (1344, 448)  # long side capped at max_len, aspect ratio kept
    with pytest.raises(ValueError, match="Invalid image_process_mode"):
        conv.process_image(image, "Stretch")


def test_separator_styles_cover_all_templates():
    assert {conv.sep_style for conv in conv_templates.values()} == set(SeparatorStyle)
