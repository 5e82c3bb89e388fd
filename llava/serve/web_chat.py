"""What the web UI does to a conversation and sends to a worker, without gradio (the layout is in
``llava.serve.gradio_web_server``).

Upstream's rules, kept exactly: the text cut-offs and the ``<image>`` tag ``add_text`` appends, the template that
``http_bot`` picks from the model's name on the first round, the request body it posts to
``/worker_generate_stream`` and how it reads the NUL-delimited JSON chunks (each holds the prompt followed by the
answer so far), the conversation log's records.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN, LOGDIR
from llava.conversation import Conversation, SeparatorStyle, conv_templates, get_conv_template

logger = logging.getLogger(__name__)

# A new chat starts from upstream's default_conversation (vicuna_v1); http_bot re-templates its first round.
START_TEMPLATE = "vicuna_v1"
PREPROCESS_MODES = ("Crop", "Resize", "Pad", "Default")
DEFAULT_PREPROCESS_MODE = "Default"
# Upstream's hard cut-offs on what a person types (characters), and on the tokens asked for.
TEXT_LIMIT = 1536
TEXT_LIMIT_WITH_IMAGE = 1200
MAX_NEW_TOKENS_LIMIT = 1536
CURSOR = "▌"
HEADERS = {"User-Agent": "LLaVA Client"}
STREAM_TIMEOUT_S = 10
# Upstream sleeps this long after each streamed chunk, which bounds how often the page is redrawn.
CHUNK_PAUSE_S = 0.03
# Upstream's order of the model list: these two first, the rest by name.
PRIORITY = {"vicuna-13b": "aaaaaaa", "koala-13b": "aaaaaab"}


def new_conversation() -> Conversation:
    return get_conv_template(START_TEMPLATE)


def sort_models(models: Iterable[str]) -> list[str]:
    return sorted(models, key=lambda name: PRIORITY.get(name, name))


def template_for_model(model_name: str) -> str:
    """The template http_bot picks for a model by its name (upstream's rules, in their order).

    Upstream also names ``mistral_orca`` (a "mistral" + "orca" LLaVA) and ``mpt_text`` (a non-LLaVA MPT), which its
    own ``conv_templates`` lacks (a KeyError in its handler); here they are a ValueError that says so
    (docs/upstream_differences.md #31).
    """
    name = model_name.lower()
    if "llava" in name:
        if "llama-2" in name:
            chosen = "llava_llama_2"
        elif "mistral" in name or "mixtral" in name:
            chosen = "mistral_orca" if "orca" in name else "chatml_direct" if "hermes" in name else "mistral_instruct"
        elif "llava-v1.6-34b" in name:
            chosen = "chatml_direct"
        elif "v1" in name:
            chosen = _llava_template("v1", name)
        elif "mpt" in name:
            chosen = "mpt"
        else:
            chosen = _llava_template("v0", name)
    elif "mpt" in model_name:  # upstream tests these two without lower-casing
        chosen = "mpt_text"
    elif "llama-2" in model_name:
        chosen = "llama_2"
    else:
        chosen = "vicuna_v1"
    if chosen not in conv_templates:
        raise ValueError(
            f"upstream's web server picks the {chosen!r} template for model {model_name!r}, but no such template "
            "exists (nor in upstream's llava.conversation); rename the model's folder or serve it with the CLI "
            "and --conv-mode"
        )
    return chosen


def _llava_template(version: str, lowered_name: str) -> str:
    """A v0/v1 LLaVA's template: the mmtag one for mmtag models and for projector-only ("plain") runs."""
    if "mmtag" in lowered_name or ("plain" in lowered_name and "finetune" not in lowered_name):
        return f"{version}_mmtag"
    return f"llava_{version}"


def add_text(state: Conversation, text: str, image: Any, image_process_mode: str) -> Conversation:
    """The conversation after a person sends ``text`` (and maybe an image); ``skip_next`` set when there is nothing
    to send. A new image starts a new conversation, as upstream."""
    if not text and image is None:
        state.skip_next = True
        return state
    text = text[:TEXT_LIMIT]
    message: Any = text
    if image is not None:
        text = text[:TEXT_LIMIT_WITH_IMAGE]
        if DEFAULT_IMAGE_TOKEN not in text:
            text = text + "\n" + DEFAULT_IMAGE_TOKEN
        message = (text, image, image_process_mode)
        state = new_conversation()
    state.append_message(state.roles[0], message)
    state.append_message(state.roles[1], None)
    state.skip_next = False
    return state


def regenerate(state: Conversation, image_process_mode: str) -> Conversation:
    """Drop the last answer (and re-apply the chosen preprocess mode to the last image) so that it is asked again."""
    state.messages[-1][-1] = None
    question = state.messages[-2]
    if isinstance(question[1], (tuple, list)):
        question[1] = (*question[1][:2], image_process_mode)
    state.skip_next = False
    return state


def for_model(state: Conversation, model_name: str) -> Conversation:
    """On the first round, the question moved into the template of ``model_name``; later rounds keep theirs."""
    if len(state.messages) != state.offset + 2:
        return state
    templated = get_conv_template(template_for_model(model_name))
    templated.append_message(templated.roles[0], state.messages[-2][1])
    templated.append_message(templated.roles[1], None)
    return templated


def stop_string(state: Conversation) -> str | None:
    return state.sep if state.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT) else state.sep2


@dataclass
class WorkerRequest:
    """The body for ``/worker_generate_stream`` and what the answer's chunks start with."""

    payload: dict
    prompt: str
    image_hashes: list[str]


def worker_request(
    state: Conversation, model_name: str, temperature: float, top_p: float, max_new_tokens: int
) -> WorkerRequest:
    """What upstream's http_bot posts: the prompt, the sampling values, the template's stop string and the images as
    base64 PNG after their preprocess mode."""
    prompt = state.get_prompt()
    hashes = [hashlib.md5(image.tobytes()).hexdigest() for image in state.get_images(return_pil=True)]
    payload = {
        "model": model_name,
        "prompt": prompt,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": min(int(max_new_tokens), MAX_NEW_TOKENS_LIMIT),
        "stop": stop_string(state),
        "images": state.get_images(),
    }
    return WorkerRequest(payload, prompt, hashes)


@dataclass
class Chunk:
    text: str  # the answer so far (error_code 0) or the worker's error message
    error_code: int


def read_chunks(lines: Iterable[bytes], prompt: str) -> Iterator[Chunk]:
    """The worker's NUL-delimited JSON chunks as answers so far (the prompt cut off, stripped, as upstream)."""
    for line in lines:
        if not line:
            continue
        data = json.loads(line.decode())
        if data["error_code"] == 0:
            yield Chunk(data["text"][len(prompt) :].strip(), 0)
        else:
            yield Chunk(data["text"], data["error_code"])


def stream_answer(worker_address: str, request: WorkerRequest, session=None) -> Iterator[Chunk]:
    """Post ``request`` to the worker and yield its chunks as they arrive (requests' exceptions propagate)."""
    import requests

    session = session or requests
    response = session.post(
        worker_address + "/worker_generate_stream",
        headers=HEADERS,
        json=request.payload,
        stream=True,
        timeout=STREAM_TIMEOUT_S,
    )
    yield from read_chunks(response.iter_lines(decode_unicode=False, delimiter=b"\0"), request.prompt)


def chatbot_messages(state: Conversation) -> list[dict]:
    """The conversation in gradio's messages format (gradio 6 has no other): upstream's chat pairs, the image
    inline in the person's turn."""
    messages = []
    for question, answer in state.to_gradio_chatbot():
        messages.append({"role": "user", "content": question})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return messages


# ----------------------------------------------------------------------------------------------------------------
# Upstream's logs: one JSON line per chat, vote and flag in LOGDIR/<date>-conv.json; each image once as
# LOGDIR/serve_images/<date>/<md5>.jpg.


def conv_log_path(logdir: str = LOGDIR) -> str:
    today = datetime.datetime.now()
    return os.path.join(logdir, f"{today.year}-{today.month:02d}-{today.day:02d}-conv.json")


def append_log(record: dict, logdir: str = LOGDIR) -> None:
    with open(conv_log_path(logdir), "a") as log:
        log.write(json.dumps(record) + "\n")


def vote_record(vote_type: str, state: Conversation, model_name: str, ip: str) -> dict:
    return {"tstamp": round(time.time(), 4), "type": vote_type, "model": model_name, "state": state.dict(), "ip": ip}


def save_images(state: Conversation, hashes: list[str], logdir: str = LOGDIR) -> None:
    today = datetime.datetime.now()
    folder = os.path.join(logdir, "serve_images", f"{today.year}-{today.month:02d}-{today.day:02d}")
    for image, digest in zip(state.get_images(return_pil=True), hashes):
        filename = os.path.join(folder, f"{digest}.jpg")
        if not os.path.isfile(filename):
            os.makedirs(folder, exist_ok=True)
            image.convert("RGB").save(filename)
