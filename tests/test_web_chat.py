"""The web UI's conversation steps and worker request (llava.serve.web_chat), without a browser or a server."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from llava.conversation import CHAT_PAD_COLOR
from llava.serve import web_chat

SYSTEM_V1 = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


# Upstream's http_bot, rule by rule (names of released and typical checkpoints).
@pytest.mark.parametrize(
    ("model_name", "template"),
    [
        ("llava-v1.5-13b", "llava_v1"),
        ("llava-v1.5-7b-lora", "llava_v1"),
        ("checkpoints_llava-v1.5-7b-lora_checkpoint-500", "llava_v1"),
        ("llava-v1.6-vicuna-7b", "llava_v1"),
        ("llava-v1.6-mistral-7b", "mistral_instruct"),
        ("LLaVA-Mixtral-8x7b", "mistral_instruct"),
        ("llava-v1.6-nous-hermes-2-mistral", "chatml_direct"),
        ("llava-v1.6-34b", "chatml_direct"),
        ("llava-llama-2-13b-chat-lightning-preview", "llava_llama_2"),
        ("llava-v1-mmtag", "v1_mmtag"),
        ("llava-v1.5-plain", "v1_mmtag"),
        ("llava-v1.5-plain-finetune", "llava_v1"),
        ("llava-mpt-7b", "mpt"),
        ("llava-tiny-lora", "llava_v0"),
        ("llava-lcs558k-plain", "v0_mmtag"),
        ("llava-v0-mmtag", "v0_mmtag"),
        ("vicuna-7b-v1.5", "vicuna_v1"),
        ("llama-2-7b-chat", "llama_2"),
    ],
)
def test_template_follows_upstreams_name_rules(model_name, template):
    assert web_chat.template_for_model(model_name) == template


@pytest.mark.parametrize(
    ("model_name", "missing"), [("llava-v1.6-mistral-orca", "mistral_orca"), ("mpt-7b", "mpt_text")]
)
def test_templates_upstream_names_but_lacks_are_clear_errors(model_name, missing):
    with pytest.raises(ValueError, match=f"'{missing}' template for model '{model_name}'"):
        web_chat.template_for_model(model_name)


def _image(size=(60, 40), color=(200, 10, 10)) -> Image.Image:
    return Image.new("RGB", size, color)


def _decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_nothing_to_send_skips_the_turn():
    state = web_chat.add_text(web_chat.new_conversation(), "", None, "Default")
    assert state.skip_next and state.messages == []


def test_text_is_cut_as_upstream_and_an_image_tag_appended():
    state = web_chat.add_text(web_chat.new_conversation(), "x" * 2000, None, "Default")
    assert state.messages == [["USER", "x" * 1536], ["ASSISTANT", None]]
    image = _image()
    state = web_chat.add_text(state, "y" * 2000, image, "Pad")  # an image starts a new conversation
    assert len(state.messages) == 2
    text, kept, mode = state.messages[0][1]
    assert (text, kept, mode) == ("y" * 1200 + "\n<image>", image, "Pad")
    tagged = web_chat.add_text(web_chat.new_conversation(), "<image> what is it?", image, "Default")
    assert tagged.messages[0][1][0] == "<image> what is it?"


def test_first_round_request_is_upstreams_payload():
    image = _image()
    state = web_chat.add_text(web_chat.new_conversation(), "What color is it?", image, "Default")
    state = web_chat.for_model(state, "llava-v1.5-tiny-lora")
    request = web_chat.worker_request(state, "llava-v1.5-tiny-lora", 0, 0.7, 4096)
    payload = request.payload
    assert list(payload) == ["model", "prompt", "temperature", "top_p", "max_new_tokens", "stop", "images"]
    assert payload["prompt"] == f"{SYSTEM_V1} USER: <image>\nWhat color is it? ASSISTANT:"
    assert request.prompt == payload["prompt"]
    assert (payload["model"], payload["temperature"], payload["top_p"]) == ("llava-v1.5-tiny-lora", 0.0, 0.7)
    assert type(payload["temperature"]) is float and payload["max_new_tokens"] == 1536
    assert payload["stop"] == "</s>"
    [encoded] = payload["images"]
    decoded = _decoded(encoded)
    assert decoded.format == "PNG" and decoded.size == (60, 40) and decoded.getpixel((0, 0)) == (200, 10, 10)
    assert len(request.image_hashes) == 1 and len(request.image_hashes[0]) == 32
    json.dumps(payload)  # what requests posts


@pytest.mark.parametrize(
    ("model_name", "stop", "prompt_start"),
    [
        ("llava-tiny-lora", "###", "A chat between a curious human"),
        ("llava-mpt-7b", "<|im_end|>", "<|im_start|>system"),
    ],
)
def test_stop_string_comes_from_the_chosen_template(model_name, stop, prompt_start):
    state = web_chat.for_model(web_chat.add_text(web_chat.new_conversation(), "hi", None, "Default"), model_name)
    payload = web_chat.worker_request(state, model_name, 0.2, 0.7, 64).payload
    assert payload["stop"] == stop and payload["prompt"].startswith(prompt_start) and payload["images"] == []


@pytest.mark.parametrize(
    ("mode", "size", "corner"),
    [("Default", (60, 40), (200, 10, 10)), ("Crop", (60, 40), (200, 10, 10)), ("Resize", (336, 336), (200, 10, 10)),
     ("Pad", (60, 60), CHAT_PAD_COLOR)],
)  # fmt: skip
def test_preprocess_mode_shapes_the_image_sent(mode, size, corner):
    state = web_chat.add_text(web_chat.new_conversation(), "q", _image(), mode)
    [encoded] = web_chat.worker_request(state, "llava-v1.5-x", 0, 1, 8).payload["images"]
    assert _decoded(encoded).size == size and _decoded(encoded).convert("RGB").getpixel((0, 0)) == corner


def test_second_round_keeps_the_template_and_regenerate_takes_the_new_mode():
    state = web_chat.add_text(web_chat.new_conversation(), "first", _image(), "Default")
    state = web_chat.for_model(state, "llava-tiny-lora")  # llava_v0
    state.messages[-1][-1] = "an answer"
    state = web_chat.add_text(state, "second", None, "Default")
    assert web_chat.for_model(state, "llava-v1.5-7b") is state
    assert state.get_prompt().endswith("###Human: second###Assistant:")
    state.messages[-1][-1] = "another"
    state = web_chat.regenerate(state, "Pad")
    assert state.messages[-1][-1] is None and state.messages[-2][1] == "second"
    first = web_chat.regenerate(web_chat.add_text(web_chat.new_conversation(), "q", _image(), "Default"), "Pad")
    assert first.messages[0][1][2] == "Pad"


def test_chunks_are_the_answer_after_the_prompt():
    prompt = "P: question A:"
    stream = b"".join(
        json.dumps(chunk).encode() + b"\0"
        for chunk in (
            {"text": prompt + " The", "error_code": 0},
            {"text": prompt + " The shape is red.", "error_code": 0},
            {"text": "**NETWORK ERROR**", "error_code": 1},
        )
    )
    chunks = list(web_chat.read_chunks(stream.split(b"\0"), prompt))
    assert chunks == [
        web_chat.Chunk("The", 0),
        web_chat.Chunk("The shape is red.", 0),
        web_chat.Chunk("**NETWORK ERROR**", 1),
    ]


def test_chat_is_in_gradios_messages_format_with_the_image_inline():
    state = web_chat.add_text(web_chat.new_conversation(), "What is it?", _image(), "Default")
    state.messages[-1][-1] = "A red box."
    user, assistant = web_chat.chatbot_messages(state)
    assert user["role"] == "user" and user["content"].startswith('<img src="data:image/jpeg;base64,')
    assert user["content"].endswith("What is it?")
    assert assistant == {"role": "assistant", "content": "A red box."}
    pending = web_chat.add_text(web_chat.new_conversation(), "hello", None, "Default")
    assert web_chat.chatbot_messages(pending) == [{"role": "user", "content": "hello"}]


def test_logs_are_upstreams_records(tmp_path):
    state = web_chat.add_text(web_chat.new_conversation(), "q", _image(), "Default")
    request = web_chat.worker_request(state, "m", 0, 1, 8)
    web_chat.save_images(state, request.image_hashes, str(tmp_path))
    [saved] = list((tmp_path / "serve_images").glob("*/*.jpg"))
    assert saved.stem == request.image_hashes[0]
    web_chat.append_log(web_chat.vote_record("upvote", state, "m", "127.0.0.1"), str(tmp_path))
    [line] = open(web_chat.conv_log_path(str(tmp_path))).read().splitlines()
    record = json.loads(line)
    assert set(record) == {"tstamp", "type", "model", "state", "ip"} and record["type"] == "upvote"
    assert record["state"]["messages"] == [["USER", "q\n<image>"], ["ASSISTANT", None]]


# What upstream's own add_text + http_bot post (run in the reference environment), against ours, turn by turn.
UPSTREAM_CASES = [
    ("llava-v1.5-tiny-lora", [("What color is the shape?", "red_square.png", "Default")], 0.0, 0.7, 64),
    (
        "llava-v1.5-tiny-lora",
        [("Describe it.", "blue_circle.png", "Pad"), ("And its color?", None, "Pad")],
        0.2,
        1,
        512,
    ),
    ("llava-v1.5-7b", [("x" * 1300, "blue_circle.png", "Resize")], 1, 0.5, 2000),
    ("llava-v1.5-7b", [("<image> where is it?", "red_square.png", "Crop")], 0.7, 0.7, 128),
    ("llava-tiny-lora", [("What is it?", "red_square.png", "Default"), ("Sure?", None, "Default")], 0.0, 0.7, 64),
    ("llava-v1.6-mistral-7b", [("What is it?", "red_square.png", "Default")], 0.0, 0.7, 64),
    ("llava-v1.6-34b", [("What is it?", "red_square.png", "Default")], 0.0, 0.7, 64),
    ("llava-llama-2-13b-chat-lightning", [("What is it?", "red_square.png", "Default")], 0.0, 0.7, 64),
    ("llava-mpt-7b", [("What is it?", "red_square.png", "Default")], 0.0, 0.7, 64),
    ("llava-v1.5-plain", [("What is it?", "red_square.png", "Default")], 0.0, 0.7, 64),
    ("vicuna-7b-v1.5", [("y" * 1600, None, "Default")], 0.0, 0.7, 64),
    ("llama-2-7b-chat", [("Hello", None, "Default"), ("More", None, "Default")], 0.0, 0.7, 64),
]
UPSTREAM_ANSWER = "The shape is red."


def _our_payloads(model, rounds, temperature, top_p, max_new_tokens) -> list[dict]:
    from llava.serve.gradio_web_server import EXAMPLES_DIR

    state, payloads = web_chat.new_conversation(), []
    for text, image_name, mode in rounds:
        image = Image.open(EXAMPLES_DIR / image_name).convert("RGB") if image_name else None
        state = web_chat.for_model(web_chat.add_text(state, text, image, mode), model)
        payloads.append(web_chat.worker_request(state, model, temperature, top_p, max_new_tokens).payload)
        state.messages[-1][-1] = UPSTREAM_ANSWER
    return payloads


@pytest.mark.upstream
def test_requests_are_what_upstreams_web_server_posts(upstream):
    from llava.serve.gradio_web_server import EXAMPLES_DIR

    cases = [
        {
            "model": model,
            "rounds": [
                {"text": text, "image": str(EXAMPLES_DIR / image) if image else None, "mode": mode}
                for text, image, mode in rounds
            ],
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "answer": UPSTREAM_ANSWER,
        }
        for model, rounds, temperature, top_p, max_new_tokens in UPSTREAM_CASES
    ]
    results = upstream.run("web_payload", {"cases": cases})["results"]
    for case, result in zip(UPSTREAM_CASES, results):
        assert len(result["payloads"]) == len(case[1]) and _our_payloads(*case) == result["payloads"], case[0]
        assert result["chat"] == UPSTREAM_ANSWER  # upstream's reading of the stream: the prompt cut off, stripped
