"""Shared pieces of the serving tests: two tiny LoRA runs that answer differently, their reference answers, the
controller and worker as real processes on 127.0.0.1, and clients that speak upstream's protocol."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import requests
import torch
from PIL import Image
from train_helpers import multimodal_flags

from llava.launch import free_port, launch_env

HOST = "127.0.0.1"
QUESTION = "What color is the shape?"
MAX_NEW_TOKENS = 24
STARTUP_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 120
# Names with "llava" and "v1": upstream's web UI picks the llava_v1 template from them.
RUN_NAMES = ("llava-v1.5-tiny-lora-a", "llava-v1.5-tiny-lora-b")
# A few steps at this rate move the two seeds' runs apart while their answers stay long.
RUN_LEARNING_RATE = 5e-3
RUN_STEPS = 2


def train_runs(tiny, root: Path) -> list[Path]:
    """Two LoRA runs of the tiny LLaVA over one base, differing in their seed."""
    from llava.train.train import train

    runs = []
    for seed, name in enumerate(RUN_NAMES, start=1):
        output_dir = root / name
        flags = multimodal_flags(
            tiny,
            output_dir,
            learning_rate=RUN_LEARNING_RATE,
            mm_projector_lr=RUN_LEARNING_RATE,
            max_steps=RUN_STEPS,
            save_steps=RUN_STEPS,
            seed=seed,
        )
        train(argv=flags)
        runs.append(output_dir)
    return runs


def sample_image(tiny, index: int = 0) -> Image.Image:
    records = [record for record in json.loads(Path(tiny.data).read_text()) if "image" in record]
    return Image.open(Path(tiny.image_folder) / records[index]["image"]).convert("RGB")


def encode_image(image: Image.Image, image_format: str = "PNG") -> str:
    buffered = io.BytesIO()
    image.save(buffered, format=image_format)
    return base64.b64encode(buffered.getvalue()).decode()


def image_prompt(question: str = QUESTION, template: str = "llava_v1") -> tuple[str, str]:
    """(prompt, stop) as upstream's web UI renders a first question about an image."""
    from llava.conversation import SeparatorStyle, conv_templates

    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    stop = conv.sep if conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT) else conv.sep2
    return conv.get_prompt(), stop


def reference_answers(run: Path, base: Path, prompt: str, images: Sequence[Image.Image], max_new_tokens: int) -> list:
    """What ``load_pretrained_model`` + ``generate`` at temperature 0 answer (one prompt at a time)."""
    from llava.inference import images_to_tensor
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, image_processor, _ = load_pretrained_model(run, base, device="cpu")
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    answers = []
    for image in images:
        with torch.inference_mode():
            output = model.generate(
                ids,
                images=images_to_tensor([image], image_processor, model),
                image_sizes=[image.size],
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.eos_token_id,
            )
        answers.append(tokenizer.decode(output[0], skip_special_tokens=True))
    return answers


def stream(address: str, payload: dict, timeout: float = REQUEST_TIMEOUT_S) -> list[dict]:
    """POST to ``/worker_generate_stream`` and read the chunks as upstream's clients do."""
    reply = requests.post(
        address + "/worker_generate_stream",
        headers={"User-Agent": "LLaVA Client"},
        json=payload,
        stream=True,
        timeout=timeout,
    )
    reply.raise_for_status()
    return [json.loads(piece.decode()) for piece in reply.iter_lines(decode_unicode=False, delimiter=b"\0") if piece]


def post(address: str, path: str, body: dict | None = None) -> dict | None:
    reply = requests.post(address + path, json=body, timeout=REQUEST_TIMEOUT_S)
    reply.raise_for_status()
    return reply.json()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, process: Server | None = None) -> float:
    """Poll ``condition`` until true; returns the seconds it took. Fails (with the server's log) after
    ``timeout_s`` or when ``process`` exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if process is not None and process.popen.poll() is not None:
            raise AssertionError(f"{what}: the server exited with {process.popen.returncode}\n{process.log_tail()}")
        with contextlib.suppress(requests.exceptions.RequestException):
            if condition():
                return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s\n{process.log_tail() if process else ''}")


class Server:
    """``python -m llava.serve.<module> ...`` on 127.0.0.1, its output in ``log``; stopped by :meth:`stop`."""

    def __init__(
        self, module: str, args: Sequence[str], cwd: Path, name: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.log = cwd / f"{name}.log"
        self.popen = subprocess.Popen(
            [sys.executable, "-m", f"llava.serve.{module}", *map(str, args)],
            cwd=cwd,
            env={**launch_env(), **(env or {})},
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)


def start_controller(cwd: Path, heart_beat_expiration: float = 2.0) -> tuple[Server, str]:
    port = free_port()
    address = f"http://{HOST}:{port}"
    server = Server(
        "controller",
        ["--host", HOST, "--port", port, "--heart-beat-expiration", heart_beat_expiration],
        cwd,
        f"controller-{port}",
    )
    wait_for(lambda: post(address, "/list_models") is not None, STARTUP_TIMEOUT_S, "controller start", server)
    return server, address


def start_worker(
    cwd: Path, controller: str, model_paths: Sequence[Path], model_base: Path | None, *extra: str
) -> tuple[Server, str]:
    """A worker with upstream's abbreviated flags (``--controller``, ``--worker``), registered and answering."""
    port = free_port()
    address = f"http://{HOST}:{port}"
    args = ["--host", HOST, "--port", port, "--controller", controller, "--worker", address, "--device", "cpu"]
    args += ["--model-path", *model_paths, "--heart-beat-interval", "1", *extra]
    if model_base is not None:
        args += ["--model-base", model_base]
    server = Server("model_worker", args, cwd, f"worker-{port}")
    wait_for(lambda: post(address, "/worker_get_status") is not None, STARTUP_TIMEOUT_S, "worker start", server)
    return server, address


@contextlib.contextmanager
def servers(*started: tuple[Server, str]) -> Iterator[list[str]]:
    try:
        yield [address for _, address in started]
    finally:
        for server, _ in reversed(started):
            server.stop()
