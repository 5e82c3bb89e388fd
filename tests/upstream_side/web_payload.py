"""What upstream's own web server posts to /worker_generate_stream: its ``add_text`` and ``http_bot`` run as they are.

The reference environment has no gradio 4.16 and the handlers use none of it (only button objects they return), so a
minimal ``gradio`` module stands in for the import. ``requests.post`` answers in place of the controller and the
worker: the controller names a worker, the worker records the body and streams ``prompt + answer``.

Request: {"cases": [{"model", "rounds": [{"text", "image": path | null, "mode"}], "temperature", "top_p",
"max_new_tokens", "answer"}]}. Answer: {"results": [{"payloads": [body per round], "chat": last chat text}]}.
"""

from __future__ import annotations

import json as json_lib
import sys
import types
from types import SimpleNamespace

from _common import main, upstream_llava

WORKER = "http://worker.invalid"


def _stand_in_gradio() -> None:
    gradio = types.ModuleType("gradio")

    class Component:
        def __init__(self, *args, **kwargs):
            self.kwargs = kwargs

    gradio.Button = gradio.Dropdown = Component
    gradio.Request = object
    sys.modules["gradio"] = gradio


class _Worker:
    """``requests.post`` for the controller's and the worker's endpoints."""

    def __init__(self):
        self.bodies = []
        self.answer = ""

    def post(self, url, json=None, **kwargs):
        if url.endswith("/get_worker_address"):
            return SimpleNamespace(json=lambda: {"address": WORKER})
        self.bodies.append(json)
        text = json["prompt"] + " " + self.answer
        chunk = json_lib.dumps({"text": text, "error_code": 0}).encode()
        return SimpleNamespace(iter_lines=lambda **kw: iter([chunk, b""]))


def handle(request: dict) -> dict:
    upstream_llava()
    _stand_in_gradio()
    from PIL import Image

    from llava.serve import gradio_web_server as server

    worker = _Worker()
    server.requests = SimpleNamespace(post=worker.post, exceptions=server.requests.exceptions)
    server.time = SimpleNamespace(time=server.time.time, sleep=lambda seconds: None)
    server.args = SimpleNamespace(controller_url="http://controller.invalid", moderate=False)
    client = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"))

    results = []
    for case in request["cases"]:
        worker.bodies, worker.answer = [], case["answer"]
        state = server.default_conversation.copy()
        chat = None
        for turn in case["rounds"]:
            image = Image.open(turn["image"]).convert("RGB") if turn["image"] else None
            state = server.add_text(state, turn["text"], image, turn["mode"], client)[0]
            for output in server.http_bot(
                state, case["model"], case["temperature"], case["top_p"], case["max_new_tokens"], client
            ):
                state, chat = output[0], output[1]
        results.append({"payloads": worker.bodies, "chat": chat[-1][-1] if chat else None})
    return {"results": results}


if __name__ == "__main__":
    main(handle)
