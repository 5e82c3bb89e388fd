"""The controller: workers register with it and send heartbeats; clients ask it which worker serves a model.

``python -m llava.serve.controller --host 0.0.0.0 --port 10000`` with upstream's flags, endpoints and JSON bodies.
A worker whose heartbeats stop is dropped after ``--heart-beat-expiration`` seconds (upstream's 30 by default; it is
checked every that many seconds, so a dead worker leaves ``/list_models`` within twice that).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from llava.constants import CONTROLLER_HEART_BEAT_EXPIRATION
from llava.serve.dispatch import DispatchMethod, WorkerInfo, choose_worker
from llava.serve.protocol import DELIMITER, ErrorCode, chunk
from llava.utils import build_logger, server_error_msg

logger = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5
STREAM_CONNECT_TIMEOUT_S = 5


def heart_beat_controller(controller: Controller) -> None:
    while not controller.stopped.wait(controller.heart_beat_expiration):
        controller.remove_stable_workers_by_expiration()


class Controller:
    """The registry of workers (upstream's methods and names), safe to call from several threads."""

    def __init__(
        self, dispatch_method: str, heart_beat_expiration: float = CONTROLLER_HEART_BEAT_EXPIRATION, start: bool = True
    ) -> None:
        self.worker_info: dict[str, WorkerInfo] = {}
        self.dispatch_method = DispatchMethod.from_str(dispatch_method)
        self.heart_beat_expiration = heart_beat_expiration
        self.lock = threading.RLock()
        self.stopped = threading.Event()
        self.heart_beat_thread = threading.Thread(target=heart_beat_controller, args=(self,), daemon=True)
        if start:
            self.heart_beat_thread.start()
        logger.info("Init controller")

    def register_worker(self, worker_name: str, check_heart_beat: bool, worker_status: dict | None) -> bool:
        logger.info(
            "Register %s worker: %s", "an existing" if worker_name in self.worker_info else "a new", worker_name
        )
        if not worker_status:
            worker_status = self.get_worker_status(worker_name)
        if not worker_status:
            return False
        with self.lock:
            self.worker_info[worker_name] = WorkerInfo(
                list(worker_status["model_names"]),
                worker_status["speed"],
                worker_status["queue_length"],
                check_heart_beat,
                time.time(),
            )
        logger.info("Register done: %s, %s", worker_name, worker_status)
        return True

    def get_worker_status(self, worker_name: str) -> dict | None:
        try:
            reply = requests.post(worker_name + "/worker_get_status", timeout=STATUS_TIMEOUT_S)
        except requests.exceptions.RequestException as err:
            logger.error("Get status fails: %s, %s", worker_name, err)
            return None
        if reply.status_code != 200:
            logger.error("Get status fails: %s, %s", worker_name, reply)
            return None
        return reply.json()

    def remove_worker(self, worker_name: str) -> None:
        with self.lock:
            self.worker_info.pop(worker_name, None)

    def refresh_all_workers(self) -> None:
        with self.lock:
            old_info, self.worker_info = dict(self.worker_info), {}
        for name, info in old_info.items():
            if not self.register_worker(name, info.check_heart_beat, None):
                logger.info("Remove stale worker: %s", name)

    def list_models(self) -> list[str]:
        with self.lock:
            return sorted({name for info in self.worker_info.values() for name in info.model_names})

    def get_worker_address(self, model_name: str) -> str:
        with self.lock:
            address = choose_worker(self.dispatch_method, self.worker_info, model_name)
        logger.info("model %s -> worker %r", model_name, address)
        return address

    def receive_heart_beat(self, worker_name: str, queue_length: int) -> bool:
        with self.lock:
            info = self.worker_info.get(worker_name)
            if info is None:
                logger.info("Receive unknown heart beat. %s", worker_name)
                return False
            info.queue_length = queue_length
            info.last_heart_beat = time.time()
        logger.info("Receive heart beat. %s", worker_name)
        return True

    def remove_stable_workers_by_expiration(self) -> None:
        expire = time.time() - self.heart_beat_expiration
        with self.lock:
            expired = [
                name
                for name, info in self.worker_info.items()
                if info.check_heart_beat and info.last_heart_beat < expire
            ]
            for name in expired:
                logger.info("Remove worker without heart beat: %s", name)
                del self.worker_info[name]

    def worker_api_generate_stream(self, params: dict[str, Any]) -> Iterator[bytes]:
        """Relay a generation request to a worker of ``params["model"]`` and its stream back."""
        worker_addr = self.get_worker_address(params.get("model", ""))
        if not worker_addr:
            logger.info("no worker: %s", params.get("model"))
            yield chunk(server_error_msg, ErrorCode.NO_WORKER)
            return
        try:
            reply = requests.post(
                worker_addr + "/worker_generate_stream", json=params, stream=True, timeout=STREAM_CONNECT_TIMEOUT_S
            )
            for piece in reply.iter_lines(decode_unicode=False, delimiter=DELIMITER):
                if piece:
                    yield piece + DELIMITER
        except requests.exceptions.RequestException:
            logger.info("worker timeout: %s", worker_addr)
            yield chunk(server_error_msg, ErrorCode.WORKER_UNREACHABLE)

    def worker_api_get_status(self) -> dict[str, Any]:
        """The controller answering as one worker for all of its own (upstream's hierarchical setup)."""
        model_names: set[str] = set()
        speed = queue_length = 0
        with self.lock:
            names = list(self.worker_info)
        for name in names:
            status = self.get_worker_status(name)
            if status is not None:
                model_names.update(status["model_names"])
                speed += status["speed"]
                queue_length += status["queue_length"]
        return {"model_names": sorted(model_names), "speed": speed, "queue_length": queue_length}


app = FastAPI()


def _controller(request: Request) -> Controller:
    return request.app.state.controller


# Plain `def` endpoints: FastAPI runs them in its thread pool, so the blocking calls to workers (status, relayed
# streams) never stall the event loop that serves the other requests.
@app.post("/register_worker")
def register_worker(request: Request, data: dict[str, Any]) -> None:
    _controller(request).register_worker(data["worker_name"], data["check_heart_beat"], data.get("worker_status"))


@app.post("/refresh_all_workers")
def refresh_all_workers(request: Request) -> None:
    _controller(request).refresh_all_workers()


@app.post("/list_models")
def list_models(request: Request) -> dict[str, list[str]]:
    return {"models": _controller(request).list_models()}


@app.post("/get_worker_address")
def get_worker_address(request: Request, data: dict[str, Any]) -> dict[str, str]:
    return {"address": _controller(request).get_worker_address(data["model"])}


@app.post("/receive_heart_beat")
def receive_heart_beat(request: Request, data: dict[str, Any]) -> dict[str, bool]:
    return {"exist": _controller(request).receive_heart_beat(data["worker_name"], data["queue_length"])}


@app.post("/worker_generate_stream")
def worker_api_generate_stream(request: Request, params: dict[str, Any]) -> StreamingResponse:
    return StreamingResponse(_controller(request).worker_api_generate_stream(params))


@app.post("/worker_get_status")
def worker_api_get_status(request: Request) -> dict[str, Any]:
    return _controller(request).worker_api_get_status()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", type=str, default="localhost")
    parser.add_argument("--port", type=int, default=21001)
    parser.add_argument("--dispatch-method", type=str, choices=["lottery", "shortest_queue"], default="shortest_queue")
    parser.add_argument(
        "--heart-beat-expiration",
        type=float,
        default=CONTROLLER_HEART_BEAT_EXPIRATION,
        help="seconds without a heartbeat after which a worker is dropped (upstream's constant, 30)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    build_logger("controller", "controller.log")
    logger.info("args: %s", args)
    app.state.controller = Controller(args.dispatch_method, args.heart_beat_expiration)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
