"""The serving stack's pieces in-process, without models or sockets (issue 16): the request checks, the image guard,
the stream format, dispatch, the controller's registry and expiry, the worker's flags and model names."""

from __future__ import annotations

import base64
import io
import random
import re
import struct
import zlib

import pytest
import torch
from PIL import Image

from llava.serve import controller as controller_module
from llava.serve import model_worker, sglang_worker
from llava.serve.dispatch import DispatchMethod, WorkerInfo, choose_worker
from llava.serve.protocol import chunk, split_chunks
from llava.serve.request import MAX_NEW_TOKENS_LIMIT, BadRequest, decode_image, parse_request

MODELS = ["llava-v1.5-a", "llava-v1.5-b"]


def _png(width: int, height: int) -> str:
    buffered = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffered, format="PNG")
    return base64.b64encode(buffered.getvalue()).decode()


def _png_header(width: int, height: int) -> str:
    def png_chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")
    return base64.b64encode(data).decode()


GOOD = {"model": "llava-v1.5-a", "prompt": "USER: <image>\nhi ASSISTANT:", "images": ["x"], "max_new_tokens": 8}

BAD_REQUESTS = {
    "not an object": ([1, 2], "must be a JSON object"),
    "unknown model": ({"model": "other"}, "does not serve model 'other'; it serves llava-v1.5-a, llava-v1.5-b"),
    "no prompt": ({"prompt": None}, "the prompt is empty"),
    "blank prompt": ({"prompt": " \n"}, "the prompt is empty"),
    "images not a list": ({"images": "abc"}, "'images' must be a list"),
    "more images than tokens": ({"images": ["x", "y"]}, "1 <image> token(s) but 2 image(s)"),
    "fewer images than tokens": ({"images": []}, "1 <image> token(s) but 0 image(s)"),
    "negative temperature": ({"temperature": -1}, "temperature must be 0 (greedy) or more"),
    "temperature not a number": ({"temperature": "hot"}, "temperature must be a number"),
    "top_p zero": ({"top_p": 0}, "top_p must be in (0, 1]"),
    "max_new_tokens zero": ({"max_new_tokens": 0}, "max_new_tokens must be a whole number from 1 to 1024"),
    "max_new_tokens text": ({"max_new_tokens": "9"}, "max_new_tokens must be a whole number"),
    "max_new_tokens over": ({"max_new_tokens": 1025}, "max_new_tokens 1025 is over this worker's limit of 1024"),
    "stop not text": ({"stop": 3}, "'stop' must be a string"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_are_refused_with_what_to_send(case):
    change, message = BAD_REQUESTS[case]
    params = change if not isinstance(change, dict) else {**GOOD, **change}
    with pytest.raises(BadRequest) as raised:
        parse_request(params, MODELS)
    assert message in str(raised.value)


def test_a_good_request_gets_upstreams_defaults():
    request = parse_request({"prompt": "hello", "model": "llava-v1.5-b"}, MODELS)
    assert (request.temperature, request.top_p, request.max_new_tokens, request.stop, request.images) == (
        1.0,
        1.0,
        256,
        None,
        [],
    )
    assert request.do_sample
    assert not parse_request({**GOOD, "temperature": 0.0, "max_new_tokens": 8.0}, MODELS).do_sample
    assert parse_request({**GOOD, "max_new_tokens": MAX_NEW_TOKENS_LIMIT}, MODELS).max_new_tokens == 1024
    # a worker of one model serves it when the request names none (upstream's worker ignores "model")
    assert parse_request({"prompt": "hello"}, ["only"]).model == "only"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("@@@", "image 1 is not valid base64"),
        (base64.b64encode(b"no image here").decode(), "image 1 is not an image file PIL can read"),
        (_png_header(30000, 30000), "image 1 is far too large to decode"),
        (_png_header(9000, 9000), "image 1 is 9000x9000 pixels, over this worker's limit of 67108864 pixels"),
        (_png(40, 30)[:-40], "image 1 could not be decoded"),
    ],
    ids=["bad base64", "not an image", "decompression bomb", "over the limit", "truncated"],
)
def test_images_that_cannot_be_served(data, message):
    with pytest.raises(BadRequest) as raised:
        decode_image(data, 0)
    assert message in str(raised.value)


def test_an_image_decodes_to_rgb():
    image = decode_image(_png(40, 30), 0)
    assert (image.mode, image.size, image.getpixel((3, 3))) == ("RGB", (40, 30), (200, 10, 10))


def test_the_stream_is_nul_delimited_json():
    data = chunk("USER: hi ASSISTANT: ok") + chunk("bad", 1)
    assert data == b'{"text": "USER: hi ASSISTANT: ok", "error_code": 0}\x00{"text": "bad", "error_code": 1}\x00'
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]  # split anywhere, as a socket may
    assert list(split_chunks(pieces)) == [
        {"text": "USER: hi ASSISTANT: ok", "error_code": 0},
        {"text": "bad", "error_code": 1},
    ]


def _workers():
    return {
        "http://a": WorkerInfo(["m", "n"], speed=1, queue_length=3, check_heart_beat=True, last_heart_beat=0.0),
        "http://b": WorkerInfo(["m"], speed=2, queue_length=2, check_heart_beat=True, last_heart_beat=0.0),
        "http://c": WorkerInfo(["n"], speed=1, queue_length=0, check_heart_beat=True, last_heart_beat=0.0),
    }


def test_shortest_queue_picks_the_least_loaded_per_speed_and_counts_it():
    workers = _workers()
    picks = [choose_worker(DispatchMethod.SHORTEST_QUEUE, workers, "m") for _ in range(4)]
    # queue / speed: a 3, b 1 -> b; a 3, b 1.5 -> b; a 3, b 2 -> b; a 3, b 2.5 -> b (each pick adds one to b)
    assert picks == ["http://b", "http://b", "http://b", "http://b"]
    assert workers["http://b"].queue_length == 6
    assert choose_worker(DispatchMethod.SHORTEST_QUEUE, workers, "nobody") == ""


def test_lottery_draws_in_proportion_to_speed():
    rng = random.Random(0)
    picks = [choose_worker(DispatchMethod.LOTTERY, _workers(), "m", rng) for _ in range(3000)]
    assert set(picks) == {"http://a", "http://b"}
    assert 0.62 < picks.count("http://b") / len(picks) < 0.71  # 2/3
    assert choose_worker(DispatchMethod.LOTTERY, _workers(), "nobody", rng) == ""
    with pytest.raises(ValueError, match="Invalid dispatch method 'fastest'"):
        DispatchMethod.from_str("fastest")


def test_the_controller_registers_beats_and_expires(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(controller_module.time, "time", lambda: clock[0])
    controller = controller_module.Controller("shortest_queue", heart_beat_expiration=2.0, start=False)
    status = {"model_names": ["m"], "speed": 1, "queue_length": 0}
    assert controller.register_worker("http://a", True, status)
    assert controller.register_worker("http://b", False, {**status, "model_names": ["n"]})
    assert controller.list_models() == ["m", "n"]
    clock[0] += 1.5
    assert controller.receive_heart_beat("http://a", 4)
    assert not controller.receive_heart_beat("http://unknown", 0)
    clock[0] += 1.5
    controller.remove_stable_workers_by_expiration()
    assert controller.list_models() == ["m", "n"]  # a beat 1.5 s ago
    clock[0] += 2.5
    controller.remove_stable_workers_by_expiration()
    assert controller.list_models() == ["n"]  # b asked not to be checked
    assert controller.worker_info["http://b"].queue_length == 0


def test_a_controller_without_a_worker_answers_error_code_2():
    controller = controller_module.Controller("lottery", start=False)
    assert list(split_chunks(controller.worker_api_generate_stream({"model": "m"}))) == [
        {"text": controller_module.server_error_msg, "error_code": 2}
    ]


@pytest.mark.parametrize(
    ("paths", "names", "expected"),
    [
        (["/runs/llava-v1.5-7b-lora/"], None, ["llava-v1.5-7b-lora"]),
        (["/runs/llava-v1.5-7b-lora/checkpoint-500"], None, ["llava-v1.5-7b-lora_checkpoint-500"]),
        (["liuhaotian/llava-v1.5-7b"], None, ["llava-v1.5-7b"]),
        (["/r/a", "/r/b/checkpoint-2"], None, ["a", "b_checkpoint-2"]),
        (["/r/a", "/s/a"], ["x", "y"], ["x", "y"]),
    ],
)
def test_model_names_follow_upstreams_rule(paths, names, expected):
    assert model_worker.model_names_for(paths, names) == expected


@pytest.mark.parametrize(
    ("paths", "names", "message"),
    [
        (["/r/a", "/s/a"], None, "two --model-path have the same name"),
        (["/r/a", "/r/b"], ["x"], "--model-name gives 1 name(s) for 2 --model-path"),
    ],
)
def test_model_names_that_cannot_work(paths, names, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        model_worker.model_names_for(paths, names)


def test_the_worker_takes_upstreams_abbreviated_flags():
    args = model_worker.build_parser().parse_args(
        ["--controller", "http://c:1", "--worker", "http://w:2", "--model-path", "/r/a", "/r/b", "--model-base", "/b"]
    )
    assert (args.controller_address, args.worker_address, args.model_path) == (
        "http://c:1",
        "http://w:2",
        ["/r/a", "/r/b"],
    )
    assert (args.limit_model_concurrency, args.heart_beat_interval, args.port) == (5, 15, 21002)
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")
    controller_args = controller_module.build_parser().parse_args([])
    assert (controller_args.port, controller_args.dispatch_method, controller_args.heart_beat_expiration) == (
        21001,
        "shortest_queue",
        30,
    )


def test_sglang_worker_says_what_it_needs(monkeypatch):
    monkeypatch.setattr(sglang_worker.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit) as raised:
        sglang_worker.main([])
    assert "needs the sglang package and a CUDA GPU (sglang is not installed" in str(raised.value)
    assert "python -m llava.serve.model_worker" in str(raised.value)


def test_the_routed_projector_gives_each_image_its_runs_projector():
    from llava.model.lora_runs import RoutedProjector

    torch.manual_seed(0)
    projectors = {"run0": torch.nn.Linear(4, 3), "run1": torch.nn.Linear(4, 3)}
    routed = RoutedProjector(projectors)
    features = torch.randn(3, 5, 4)
    routed.route = ["run1", "run0", "run1"]
    with torch.no_grad():
        mixed = routed(features)
        expected = torch.stack([projectors[name](feature) for name, feature in zip(routed.route, features)])
        torch.testing.assert_close(mixed, expected, rtol=0, atol=0)
        routed.route = ["run0"] * 3
        torch.testing.assert_close(routed(features), projectors["run0"](features), rtol=0, atol=0)
    routed.route = None
    with pytest.raises(RuntimeError, match="the projector got 3 images but a route for none"):
        routed(features)
