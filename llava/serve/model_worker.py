"""A model worker: loads a model, registers with the controller, and streams answers.

``python -m llava.serve.model_worker --host 0.0.0.0 --controller http://localhost:10000 --port 40000
--worker http://localhost:40000 --model-path <run> [--model-base <base>]``: upstream's flags (and its abbreviations),
endpoints and stream. Beyond upstream:

- ``--model-path`` takes several LoRA runs of one ``--model-base``: the worker holds one copy of the base and serves
  each run under its own name, with its own adapter and projector (:mod:`llava.model.lora_runs`);
- requests in flight together are generated as one batch, each streamed to its own client (:mod:`.engine`), up to
  ``--limit-model-concurrency`` at once;
- ``--device`` defaults to ``cpu`` without a GPU, and the model runs in the dtype it was loaded in (images too;
  upstream casts them to fp16 everywhere);
- a request the worker cannot serve gets ``error_code`` 1 and a message saying why, and the worker serves on
  (docs/upstream_differences.md #30).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import requests
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX, WORKER_HEART_BEAT_INTERVAL
from llava.serve.protocol import ErrorCode, chunk
from llava.serve.request import BadRequest, decode_image, parse_request
from llava.utils import build_logger, pretty_print_semaphore, server_error_msg

logger = logging.getLogger(__name__)

GB = 1 << 30
worker_id = str(uuid.uuid4())[:6]
HEART_BEAT_TIMEOUT_S = 5
# Upstream's context length when the config names none.
DEFAULT_MAX_CONTEXT = 2048


def heart_beat_worker(controller: ModelWorker) -> None:
    """Send a heartbeat every interval, and at once when a request starts or ends (the controller's
    ``shortest_queue`` reads the queue lengths they carry)."""
    while not controller.stopped.is_set():
        controller.heart_beat_due.wait(controller.heart_beat_interval)
        controller.heart_beat_due.clear()
        if not controller.stopped.is_set():
            controller.send_heart_beat()


class ModelWorker:
    """Upstream's worker, serving one model or several LoRA runs of one base."""

    def __init__(
        self,
        controller_addr: str,
        worker_addr: str,
        worker_id: str,
        no_register: bool,
        model_path: str | list[str],
        model_base: str | None,
        model_name: str | list[str] | None,
        load_8bit: bool,
        load_4bit: bool,
        device: str,
        use_flash_attn: bool = False,
        limit_model_concurrency: int = 5,
        heart_beat_interval: float = WORKER_HEART_BEAT_INTERVAL,
    ) -> None:
        from llava.serve.engine import BatchingEngine

        self.controller_addr = controller_addr
        self.worker_addr = worker_addr
        self.worker_id = worker_id
        self.device = device
        self.limit_model_concurrency = limit_model_concurrency
        self.heart_beat_interval = heart_beat_interval
        self.model_semaphore: asyncio.Semaphore | None = None
        self.global_counter = 0
        paths = [model_path] if isinstance(model_path, str) else list(model_path)
        self.model_names = model_names_for(paths, model_name)
        logger.info("Loading the model(s) %s on worker %s ...", ", ".join(self.model_names), worker_id)
        self.tokenizer, self.model, self.image_processor, self.adapters = _load(
            paths, model_base, self.model_names, load_8bit, load_4bit, device, use_flash_attn
        )
        self.is_multimodal = self.image_processor is not None
        config = self.model.config
        self.max_context = getattr(config, "max_position_embeddings", DEFAULT_MAX_CONTEXT)
        # The splice cuts a sequence at the length the model was trained on: a longer prompt would lose its end.
        trained_length = getattr(config, "tokenizer_model_max_length", None) or self.max_context
        self.max_prompt = min(self.max_context, trained_length)
        self.engine = BatchingEngine(self.model, self.tokenizer, max_batch_size=limit_model_concurrency)

        self.stopped = threading.Event()
        self.heart_beat_due = threading.Event()
        if not no_register:
            self.register_to_controller()
            self.heart_beat_thread = threading.Thread(target=heart_beat_worker, args=(self,), daemon=True)
            self.heart_beat_thread.start()

    # -- the controller ------------------------------------------------------------------------------------------

    def register_to_controller(self) -> bool:
        logger.info("Register to controller")
        data = {"worker_name": self.worker_addr, "check_heart_beat": True, "worker_status": self.get_status()}
        try:
            reply = requests.post(self.controller_addr + "/register_worker", json=data, timeout=HEART_BEAT_TIMEOUT_S)
        except requests.exceptions.RequestException as err:
            logger.error(
                "cannot register with the controller at %s (%s); retrying with the heartbeats",
                self.controller_addr,
                err,
            )
            return False
        if reply.status_code != 200:
            logger.error("the controller at %s refused the registration: %s", self.controller_addr, reply.text)
        return reply.status_code == 200

    def send_heart_beat(self) -> None:
        logger.info(
            "Send heart beat. Models: %s. Semaphore: %s. global_counter: %d",
            self.model_names,
            pretty_print_semaphore(self.model_semaphore),
            self.global_counter,
        )
        try:
            reply = requests.post(
                self.controller_addr + "/receive_heart_beat",
                json={"worker_name": self.worker_addr, "queue_length": self.get_queue_length()},
                timeout=HEART_BEAT_TIMEOUT_S,
            )
            exist = reply.json()["exist"]
        except (requests.exceptions.RequestException, ValueError, KeyError) as err:
            logger.error("heart beat error: %s", err)
            return
        if not exist:
            self.register_to_controller()

    def get_queue_length(self) -> int:
        semaphore = self.model_semaphore
        if semaphore is None:
            return 0
        waiting = len(semaphore._waiters) if semaphore._waiters is not None else 0
        return self.limit_model_concurrency - semaphore._value + waiting

    def get_status(self) -> dict[str, Any]:
        return {"model_names": list(self.model_names), "speed": 1, "queue_length": self.get_queue_length()}

    # -- generation ----------------------------------------------------------------------------------------------

    def generate_stream(self, params: Any) -> Iterator[bytes]:
        """The request's stream of chunks; raises BadRequest for what cannot be served."""
        request = parse_request(params, self.model_names)
        job = self._job(request)
        for text in self.engine.stream(job):
            yield chunk(request.prompt + text)

    def generate_stream_gate(self, params: Any) -> Iterator[bytes]:
        """:meth:`generate_stream` that never raises: a bad request or a failure is the stream's last chunk."""
        try:
            yield from self.generate_stream(params)
        except BadRequest as err:
            logger.info("bad request: %s", err)
            yield chunk(str(err), ErrorCode.WORKER)
        except Exception:
            logger.exception("generation failed")
            yield chunk(server_error_msg, ErrorCode.WORKER)

    def _job(self, request):
        from llava.inference import image_token_text, images_to_tensor
        from llava.mm_utils import tokenizer_image_token
        from llava.model.llava_arch import image_feature_length
        from llava.serve.engine import Job

        images = [decode_image(data, index) for index, data in enumerate(request.images)]
        prompt, frames = request.prompt, []
        if images:
            if not self.is_multimodal:
                raise BadRequest(f"model {request.model} is a language model: it takes no images")
            start_end = getattr(self.model.config, "mm_use_im_start_end", False)
            prompt = prompt.replace(DEFAULT_IMAGE_TOKEN, image_token_text(start_end))
            tensors = images_to_tensor(images, self.image_processor, self.model)
            frames = list(tensors)
        with self.engine.tokenizer_lock:
            input_ids = tokenizer_image_token(prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        length = int(input_ids.numel()) + len(images) * ((image_feature_length(self.model) or 1) - 1)
        if length >= self.max_prompt:
            raise BadRequest(
                f"the prompt is {length} tokens long (images included), over the {self.max_prompt} this model takes: "
                "start a new conversation, or send a shorter one"
            )
        return Job(
            input_ids=input_ids,
            images=frames,
            image_sizes=[image.size for image in images],
            adapter=self.adapters[request.model],
            do_sample=request.do_sample,
            temperature=request.temperature,
            top_p=request.top_p,
            max_new_tokens=min(request.max_new_tokens, self.max_context - length),
            stop=request.stop,
        )

    def semaphore(self) -> asyncio.Semaphore:
        if self.model_semaphore is None:  # created in the server's event loop, on first use
            self.model_semaphore = asyncio.Semaphore(self.limit_model_concurrency)
        return self.model_semaphore


def model_names_for(paths: list[str], model_name: str | list[str] | None) -> list[str]:
    """Upstream's rule: ``--model-name``, else the folder's name (``<run>_checkpoint-N`` for a checkpoint)."""
    from llava.mm_utils import get_model_name_from_path

    if model_name is None:
        names = [get_model_name_from_path(path) for path in paths]
    else:
        names = [model_name] if isinstance(model_name, str) else list(model_name)
        if len(names) != len(paths):
            raise ValueError(
                f"--model-name gives {len(names)} name(s) for {len(paths)} --model-path: give one per path"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"two --model-path have the same name ({', '.join(names)}): tell them apart with --model-name")
    return names


def _load(paths, model_base, names, load_8bit, load_4bit, device, use_flash_attn):
    """(tokenizer, model, image_processor, adapter of each model name: None for a model loaded alone)."""
    if len(paths) == 1:
        from llava.model.builder import load_pretrained_model

        tokenizer, model, image_processor, _ = load_pretrained_model(
            paths[0], model_base, names[0], load_8bit, load_4bit, device=device, use_flash_attn=use_flash_attn
        )
        return tokenizer, model, image_processor, {names[0]: None}
    if model_base is None:
        raise ValueError("several --model-path are LoRA runs of one base: pass that base with --model-base")
    from llava.model.lora_runs import load_lora_runs

    loaded = load_lora_runs(paths, model_base, load_8bit, load_4bit, device=device, use_flash_attn=use_flash_attn)
    return loaded.tokenizer, loaded.model, loaded.image_processor, dict(zip(names, loaded.adapter_names))


app = FastAPI()


def release_model_semaphore(worker: ModelWorker, fn=None) -> None:
    worker.model_semaphore.release()
    if fn is not None:
        fn()


@app.post("/worker_generate_stream")
async def generate_stream(request: Request) -> StreamingResponse:
    worker: ModelWorker = request.app.state.worker
    worker.global_counter += 1
    try:
        params = await request.json()
    except ValueError:
        params = None  # answered as a bad request
    await worker.semaphore().acquire()
    worker.heart_beat_due.set()
    return StreamingResponse(
        worker.generate_stream_gate(params),
        background=BackgroundTask(release_model_semaphore, worker, worker.heart_beat_due.set),
    )


@app.post("/worker_get_status")
async def get_status(request: Request) -> dict[str, Any]:
    return request.app.state.worker.get_status()


def build_parser() -> argparse.ArgumentParser:
    from llava.inference import default_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", type=str, default="localhost")
    parser.add_argument("--port", type=int, default=21002)
    parser.add_argument("--worker-address", type=str, default="http://localhost:21002")
    parser.add_argument("--controller-address", type=str, default="http://localhost:21001")
    parser.add_argument(
        "--model-path",
        type=str,
        nargs="+",
        default=["facebook/opt-350m"],
        help="a model or run folder (or hub id); several LoRA runs of one --model-base share one copy of it",
    )
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--model-name", type=str, nargs="+", help="one name per --model-path (default: its folder's)")
    parser.add_argument("--device", type=str, default=default_device(), help="cuda when a GPU is visible, else cpu")
    parser.add_argument(
        "--multi-modal",
        action="store_true",
        help="ignored: a model with a vision tower takes images (upstream read it from 'llava' in the name)",
    )
    parser.add_argument("--limit-model-concurrency", type=int, default=5, help="requests generated at once (one batch)")
    parser.add_argument("--stream-interval", type=int, default=1)
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--use-flash-attn", action="store_true")
    parser.add_argument(
        "--heart-beat-interval",
        type=float,
        default=WORKER_HEART_BEAT_INTERVAL,
        help="seconds between heartbeats to the controller (upstream's constant, 15)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no GPU is visible to torch here; pass --device cpu")
    if args.limit_model_concurrency < 1:
        raise SystemExit(f"--limit-model-concurrency must be at least 1, not {args.limit_model_concurrency}")
    build_logger("model_worker", f"model_worker_{worker_id}.log")
    logger.info("args: %s", args)
    if args.multi_modal:
        logger.warning("--multi-modal is not needed: a model with a vision tower takes images")
    app.state.worker = ModelWorker(
        args.controller_address,
        args.worker_address,
        worker_id,
        args.no_register,
        args.model_path,
        args.model_base,
        args.model_name,
        args.load_8bit,
        args.load_4bit,
        args.device,
        use_flash_attn=args.use_flash_attn,
        limit_model_concurrency=args.limit_model_concurrency,
        heart_beat_interval=args.heart_beat_interval,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
