"""Register a worker with a controller by hand (upstream's tool): ``python -m llava.serve.register_worker
--controller-address http://localhost:21001 --worker-name http://localhost:21002 [--check-heart-beat]``.

The controller asks the worker for its status (``worker_status`` is sent as null).
"""

from __future__ import annotations

import argparse

import requests

TIMEOUT_S = 30


def register(controller_address: str, worker_name: str, check_heart_beat: bool) -> None:
    data = {"worker_name": worker_name, "check_heart_beat": check_heart_beat, "worker_status": None}
    reply = requests.post(controller_address + "/register_worker", json=data, timeout=TIMEOUT_S)
    if reply.status_code != 200:
        raise SystemExit(f"the controller at {controller_address} answered {reply.status_code}: {reply.text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controller-address", type=str, required=True)
    parser.add_argument("--worker-name", type=str, required=True)
    parser.add_argument("--check-heart-beat", action="store_true")
    args = parser.parse_args(argv)
    register(args.controller_address, args.worker_name, args.check_heart_beat)


if __name__ == "__main__":
    main()
