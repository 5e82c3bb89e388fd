"""Does vLLM serving an export answer as we do? ``python scripts/check_vllm_export.py`` (on a GPU machine with vLLM).

The check exports a model (by default the tiny offline LLaVA of :mod:`llava.testing`; or ``--model-path`` /
``--model-base``), answers one image question greedily with our own ``load_pretrained_model`` + ``generate``, then
starts ``vllm serve <export> --chat-template <export>/chat_template.jinja``, sends the same question with the image
through the OpenAI chat API (temperature 0) and compares the two answers; exit status 1 when they differ.

``--dry-run`` (CPU, no vLLM; what the test suite runs) does every step but the server: the request is rendered the
way vLLM renders it for a chat template that takes string contents (``<image>`` placeholder, newline, text), and
transformers' ``LlavaForConditionalGeneration`` on the export answers it in place of vLLM.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN

logger = logging.getLogger(__name__)

QUESTION = "What color is the shape in the image?"
TINY_CONV_MODE = "llava_v1"
HEALTH_POLL_S = 2.0


@dataclass(frozen=True)
class CheckResult:
    ours: str
    engine: str
    engine_name: str
    command: list[str]

    @property
    def same(self) -> bool:
        return self.ours.strip() == self.engine.strip()


def chat_request(model: str, image, question: str, max_new_tokens: int) -> dict[str, Any]:
    """The OpenAI chat request for one image question, the image inline as a PNG data URL, greedy."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": max_new_tokens,
    }


def string_content_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as vLLM hands them to a chat template that takes string contents: each image becomes the
    ``<image>`` placeholder on a line of its own before the message's text."""
    rendered = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            images = sum(part["type"] in ("image", "image_url") for part in content)
            text = "\n".join(part["text"] for part in content if part["type"] == "text")
            content = "\n".join([DEFAULT_IMAGE_TOKEN] * images + [text])
        rendered.append({"role": message["role"], "content": content})
    return rendered


def our_answer(model_path: str, model_base: str | None, image, question: str, conv_mode: str, max_new_tokens: int):
    from llava.conversation import get_conv_template
    from llava.inference import images_to_tensor
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path, model_base, None, device="cpu", dtype=torch.float32
    )
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    output = model.generate(
        ids, images=images_to_tensor([image], image_processor, model), image_sizes=[image.size],
        do_sample=False, max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return tokenizer.decode(output[0], skip_special_tokens=True)


def transformers_answer(export_dir: Path, image, request: dict[str, Any]) -> str:
    """The dry run's engine: transformers' own class on the export, fed what vLLM would feed it."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    config = AutoConfig.from_pretrained(export_dir)
    model_class = (
        LlavaNextForConditionalGeneration if config.model_type == "llava_next" else LlavaForConditionalGeneration
    )
    model = model_class.from_pretrained(export_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(export_dir)
    text = processor.apply_chat_template(string_content_messages(request["messages"]), add_generation_prompt=True)
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=request["max_tokens"])
    return processor.tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


def vllm_command(export_dir: Path, port: int, dtype: str, extra: list[str]) -> list[str]:
    executable = shutil.which("vllm")
    head = [executable, "serve"] if executable else [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    return [
        *head, str(export_dir), "--chat-template", str(export_dir / "chat_template.jinja"), "--dtype", dtype,
        "--port", str(port), "--host", "127.0.0.1", "--max-model-len", "2048", "--enforce-eager", *extra,
    ]  # fmt: skip


def vllm_answer(command: list[str], port: int, request: dict[str, Any], startup_timeout: float) -> str:
    """Start the server, wait for /health, send the request, stop the server; the answer's text."""
    server = subprocess.Popen(command, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vllm serve exited with status {server.returncode} before it was ready")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"vllm serve was not ready after {startup_timeout:.0f} s") from None
                time.sleep(HEALTH_POLL_S)
        body = json.dumps(request).encode()
        post = urllib.request.Request(
            base + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=300) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_check(args: argparse.Namespace) -> CheckResult:
    from PIL import Image

    from llava.export.convert import ExportOptions, export
    from llava.testing import build_all

    with tempfile.TemporaryDirectory(prefix="llava-vllm-check-") as tmp:
        model_path, model_base, conv_mode = args.model_path, args.model_base, args.conv_mode
        image_file = args.image_file
        if model_path is None:
            tiny = build_all(args.tiny_root or Path(tmp) / "tiny")
            model_path, conv_mode = str(tiny.llava), conv_mode or TINY_CONV_MODE
            records = [record for record in json.loads(Path(tiny.data).read_text()) if "image" in record]
            image_file = image_file or str(Path(tiny.image_folder) / records[0]["image"])
        if image_file is None:
            raise ValueError("--image-file is needed with --model-path")
        image = Image.open(image_file).convert("RGB")
        export_dir = Path(args.export_dir or Path(tmp) / "export")
        export(
            ExportOptions(
                model_path=model_path, save_model_path=str(export_dir), model_base=model_base, dtype=args.dtype,
                conv_mode=conv_mode, overwrite=args.export_dir is not None,
            )
        )  # fmt: skip
        ours = our_answer(model_path, model_base, image, args.question, conv_mode, args.max_new_tokens)
        request = chat_request(str(export_dir), image, args.question, args.max_new_tokens)
        port = _free_port()
        command = vllm_command(export_dir, port, args.dtype, args.vllm_arg or [])
        if args.dry_run:
            engine, name = transformers_answer(export_dir, image, request), "transformers (dry run)"
        else:
            engine, name = vllm_answer(command, port, request, args.startup_timeout), "vLLM"
    return CheckResult(ours=ours, engine=engine, engine_name=name, command=command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="check_vllm_export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default=None, help="what to export (default: the tiny offline LLaVA)")
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--conv-mode", default=None, help=f"chat template (the tiny model: {TINY_CONV_MODE})")
    parser.add_argument("--image-file", default=None, help="the image asked about (default: a tiny dataset image)")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--export-dir", default=None, help="keep the export here (default: a temporary folder)")
    parser.add_argument("--tiny-root", default=None, help="where to build (or reuse) the tiny model")
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--vllm-arg", action="append", help="one more argument for vllm serve (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="no vLLM: transformers answers in its place (CPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run_check(build_parser().parse_args(argv))
    print(f"server command: {' '.join(result.command)}")
    print(f"ours:   {result.ours!r}")
    print(f"{result.engine_name}: {result.engine!r}")
    print("SAME ANSWER" if result.same else "DIFFERENT ANSWERS")
    return 0 if result.same else 1
