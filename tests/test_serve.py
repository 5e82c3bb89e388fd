"""Serving through real processes on 127.0.0.1 (issue 16): the controller, a worker of one run, a worker of two LoRA
runs on one base, upstream's own test_message.py and web-UI payload, bad input, load, and a worker that dies."""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_helpers import (
    MAX_NEW_TOKENS,
    RUN_NAMES,
    encode_image,
    image_prompt,
    post,
    reference_answers,
    sample_image,
    servers,
    start_controller,
    start_worker,
    stream,
    train_runs,
    wait_for,
)

pytestmark = pytest.mark.dist

NUM_IMAGES = 2
LOAD_REQUESTS = 8
LOAD_CONCURRENCY = 2
LOAD_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    return train_runs(tiny, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def images(tiny):
    return [sample_image(tiny, index) for index in range(NUM_IMAGES)]


@pytest.fixture(scope="module")
def references(runs, tiny, images):
    """{run name: [greedy answer per image]} from load_pretrained_model + generate, each run loaded alone."""
    prompt, _ = image_prompt()
    return {run.name: reference_answers(run, tiny.llm, prompt, images, MAX_NEW_TOKENS) for run in runs}


@pytest.fixture(scope="module")
def stack(runs, tiny, tmp_path_factory):
    """A controller, a worker of run a alone, and a worker of both runs on one base (2 requests at once)."""
    cwd = tmp_path_factory.mktemp("serve")
    controller = start_controller(cwd)
    started = [controller]
    try:
        started.append(start_worker(cwd, controller[1], [runs[0]], tiny.llm, "--model-name", "llava-v1.5-alone"))
        started.append(
            start_worker(cwd, controller[1], runs, tiny.llm, "--limit-model-concurrency", str(LOAD_CONCURRENCY))
        )
    except BaseException:
        for server, _ in started:
            server.stop()
        raise
    with servers(*started) as addresses:
        yield dict(zip(("controller", "alone", "pair"), addresses), cwd=cwd)


def _payload(model, image, max_new_tokens=MAX_NEW_TOKENS, **overrides):
    prompt, stop = image_prompt()
    payload = {
        "model": model,
        "prompt": prompt,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_new_tokens": max_new_tokens,
        "stop": stop,
        "images": [encode_image(image)],
    }
    payload.update(overrides)
    return payload


def _answer(chunks, prompt):
    assert [chunk["error_code"] for chunk in chunks] == [0] * len(chunks), chunks[-1]
    texts = [chunk["text"] for chunk in chunks]
    assert all(text.startswith(prompt) for text in texts)
    return texts[-1][len(prompt) :]


def test_the_controller_lists_every_model_and_dispatches(stack):
    controller = stack["controller"]
    wait_for(lambda: len(post(controller, "/list_models")["models"]) == 3, 30, "three models listed")
    assert post(controller, "/list_models") == {"models": sorted(["llava-v1.5-alone", *RUN_NAMES])}
    assert post(controller, "/get_worker_address", {"model": "llava-v1.5-alone"}) == {"address": stack["alone"]}
    assert post(controller, "/get_worker_address", {"model": RUN_NAMES[1]}) == {"address": stack["pair"]}
    assert post(controller, "/get_worker_address", {"model": "nobody"}) == {"address": ""}
    assert post(stack["pair"], "/worker_get_status") == {"model_names": list(RUN_NAMES), "speed": 1, "queue_length": 0}


def test_one_run_streams_the_answer_of_load_pretrained_model(stack, images, references):
    prompt, _ = image_prompt()
    chunks = stream(stack["alone"], _payload("llava-v1.5-alone", images[0]))
    assert _answer(chunks, prompt) == references[RUN_NAMES[0]][0]
    assert len(chunks) > 3  # streamed piece by piece
    texts = [chunk["text"] for chunk in chunks]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))


@pytest.mark.parametrize("image_index", range(NUM_IMAGES))
def test_two_runs_on_one_base_answer_as_each_run_alone(stack, images, references, image_index):
    prompt, _ = image_prompt()
    answers = {name: _answer(stream(stack["pair"], _payload(name, images[image_index])), prompt) for name in RUN_NAMES}
    assert answers == {name: references[name][image_index] for name in RUN_NAMES}
    assert answers[RUN_NAMES[0]] != answers[RUN_NAMES[1]]  # the adapters (and projectors) were switched


def test_the_relay_through_the_controller_streams_the_same(stack, images, references):
    prompt, _ = image_prompt()
    chunks = stream(stack["controller"], _payload(RUN_NAMES[1], images[0]))
    assert _answer(chunks, prompt) == references[RUN_NAMES[1]][0]
    assert stream(stack["controller"], _payload("nobody", images[0]))[-1]["error_code"] == 2


def test_what_upstreams_web_ui_sends(stack, images, references, runs, tiny):
    """Exactly the payload of upstream's gradio_web_server.http_bot, read as it reads the stream."""
    from llava.conversation import SeparatorStyle, conv_templates

    state = conv_templates["llava_v1"].copy()  # http_bot's choice for a name with "llava" and "v1"
    state.append_message(state.roles[0], ("<image>\nWhat color is the shape?", images[1], "Default"))
    state.append_message(state.roles[1], None)
    prompt = state.get_prompt()
    payload = {
        "model": RUN_NAMES[0],
        "prompt": prompt,
        "temperature": 0.0,
        "top_p": 0.7,
        "max_new_tokens": min(int(MAX_NEW_TOKENS), 1536),
        "stop": state.sep if state.sep_style in [SeparatorStyle.SINGLE, SeparatorStyle.MPT] else state.sep2,
        "images": state.get_images(),
    }
    chunks = stream(stack["pair"], payload, timeout=10)
    assert chunks and all(chunk["error_code"] == 0 for chunk in chunks)
    output = chunks[-1]["text"][len(prompt) :].strip()
    from llava.mm_utils import load_image_from_base64

    (sent,) = [load_image_from_base64(data).convert("RGB") for data in payload["images"]]
    (expected,) = reference_answers(runs[0], tiny.llm, prompt, [sent], MAX_NEW_TOKENS)
    assert output == expected.strip()


@pytest.mark.upstream
def test_upstreams_own_test_message_runs_against_ours(stack, upstream):
    """upstream's llava/serve/test_message.py, run as a file by the reference venv's python."""
    (script,) = upstream.venv.glob("lib/python*/site-packages/llava/serve/test_message.py")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(upstream.python), str(script), "--controller-address", stack["controller"]]
        + ["--model-name", RUN_NAMES[1], "--max-new-tokens", "8", "--message", "Hello there"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=stack["cwd"],
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "[WARNING]" not in line]  # deepspeed's import notice
    assert lines[0] == f"Models: {sorted(['llava-v1.5-alone', *RUN_NAMES])}"
    assert lines[1] == f"worker_addr: {stack['pair']}"
    # It prints the prompt with its separator (vicuna_v1's " ") as line breaks, then the sampled answer.
    assert "USER:\nHello\nthere\n" in result.stdout


def _png_header(width: int, height: int) -> bytes:
    """A PNG file that claims ``width`` x ``height`` pixels: what a decompression bomb shows PIL before decoding."""

    def png_chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


BAD_INPUTS = {
    "bad base64": ({"images": ["not base64!"]}, "image 1 is not valid base64"),
    "not an image": ({"images": [_b64(b"plain text, no image")]}, "image 1 is not an image file"),
    "fewer images than <image>": ({"prompt_extra": "<image>"}, "2 <image> token(s) but 1 image(s)"),
    "unknown model": ({"model": "llava-v1.5-nobody"}, "does not serve model 'llava-v1.5-nobody'"),
    "prompt over the context": ({"prompt_extra": " word" * 400}, "over the 256 this model takes"),
    "empty prompt": ({"prompt": "   "}, "the prompt is empty"),
    "decompression bomb": ({"images": [_b64(_png_header(30000, 30000))]}, "image 1 is far too large"),
    "image over the worker's limit": ({"images": [_b64(_png_header(9000, 9000))]}, "9000x9000 pixels, over"),
    "max_new_tokens over the limit": ({"max_new_tokens": 5000}, "max_new_tokens 5000 is over this worker's limit"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_gets_an_error_and_the_next_request_is_served(stack, images, references, case):
    overrides, message = BAD_INPUTS[case]
    overrides = dict(overrides)
    payload = _payload(RUN_NAMES[0], images[0])
    if "prompt_extra" in overrides:
        payload["prompt"] = payload["prompt"].replace("\n", overrides.pop("prompt_extra") + "\n", 1)
    payload.update(overrides)
    chunks = stream(stack["pair"], payload)
    assert len(chunks) == 1 and chunks[0]["error_code"] == 1
    assert message in chunks[0]["text"]
    prompt, _ = image_prompt()
    assert _answer(stream(stack["pair"], _payload(RUN_NAMES[0], images[0])), prompt) == references[RUN_NAMES[0]][0]


def test_concurrent_streams_for_two_runs_finish_unmixed(stack, images, references):
    """8 streaming requests at once, alternating runs and images, through --limit-model-concurrency 2."""
    prompt, _ = image_prompt()
    cases = [(RUN_NAMES[index % 2], (index // 2) % NUM_IMAGES) for index in range(LOAD_REQUESTS)]
    peak = []
    stop = threading.Event()

    def watch_queue():
        while not stop.is_set():
            peak.append(post(stack["pair"], "/worker_get_status")["queue_length"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_queue, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(LOAD_REQUESTS) as pool:
        futures = [pool.submit(stream, stack["pair"], _payload(name, images[image])) for name, image in cases]
        answers = [_answer(future.result(timeout=LOAD_TIMEOUT_S), prompt) for future in futures]
    stop.set()
    watcher.join(timeout=5)
    assert answers == [references[name][image] for name, image in cases]
    assert max(peak) > LOAD_CONCURRENCY  # requests queued behind the limit and were served after


def test_a_dead_worker_leaves_the_list_after_the_heartbeat_expiry(stack, runs, tiny):
    """A worker registered by hand (llava.serve.register_worker) disappears once it is killed."""
    import sys

    from serve_helpers import launch_env

    worker, address = start_worker(
        stack["cwd"], stack["controller"], [runs[1]], tiny.llm, "--model-name", "llava-v1.5-doomed", "--no-register"
    )
    try:
        subprocess.run(
            [sys.executable, "-m", "llava.serve.register_worker", "--controller-address", stack["controller"]]
            + ["--worker-name", address, "--check-heart-beat"],
            check=True,
            env=launch_env(),
            timeout=60,
        )
        assert "llava-v1.5-doomed" in post(stack["controller"], "/list_models")["models"]
    finally:
        worker.popen.kill()
        worker.popen.wait(timeout=15)
    # The controller (--heart-beat-expiration 2) drops it within two expiry periods; the wait is bounded.
    wait_for(
        lambda: "llava-v1.5-doomed" not in post(stack["controller"], "/list_models")["models"], 30, "dead worker gone"
    )
    assert "llava-v1.5-alone" in post(stack["controller"], "/list_models")["models"]  # beating workers stay


@pytest.mark.parametrize("bits", ["load_8bit", "load_4bit"])
def test_a_quantized_worker_serves_each_run(runs, tiny, images, bits):
    """--load-8bit / --load-4bit (bitsandbytes) with two runs on one base; in-process, without the HTTP server."""
    from llava.serve.model_worker import ModelWorker
    from llava.serve.protocol import split_chunks

    worker = ModelWorker(
        "", "", "test", True, [str(run) for run in runs], str(tiny.llm), None,
        bits == "load_8bit", bits == "load_4bit", "cpu", limit_model_concurrency=2,
    )  # fmt: skip
    prompt, _ = image_prompt()
    answers = {}
    for name in RUN_NAMES:
        chunks = list(split_chunks(worker.generate_stream_gate(_payload(name, images[0]))))
        answers[name] = _answer(chunks, prompt)
    assert all(answers.values()) and answers[RUN_NAMES[0]] != answers[RUN_NAMES[1]]


def test_runs_with_non_finite_weights_are_refused_as_a_single_run_is(runs, tiny, tmp_path):
    """The shared loader's rule (llava.model.builder), naming every run and the base."""
    import shutil

    import torch

    from llava.model.lora_runs import load_lora_runs

    broken = tmp_path / "diverged"
    shutil.copytree(runs[1], broken)
    weights = broken / "adapter_model.bin"
    state = torch.load(weights, weights_only=True)
    key = sorted(name for name in state if "lora_B" in name)[0]
    state[key][0, 0] = float("nan")
    torch.save(state, weights)
    with pytest.raises(ValueError, match="has weights with NaN or inf values") as raised:
        load_lora_runs([runs[0], broken], tiny.llm, device="cpu")
    message = str(raised.value)
    assert f"{runs[0]}, {broken} over --model-base {tiny.llm}" in message
    assert ".run1." in message.split("values: ")[1]
