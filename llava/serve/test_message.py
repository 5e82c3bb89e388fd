"""Send one message to a model through the controller (or straight to a worker) and print the streamed answer:
upstream's smoke test of a serving setup, with its flags.

``python -m llava.serve.test_message --controller-address http://localhost:10000 --model-name <name>``
"""

from __future__ import annotations

import argparse
import sys

import requests

from llava.serve.protocol import split_chunks

TIMEOUT_S = 60
CHUNK_SIZE = 8192


def worker_address(controller_address: str, model_name: str) -> str:
    requests.post(controller_address + "/refresh_all_workers", timeout=TIMEOUT_S)
    models = sorted(requests.post(controller_address + "/list_models", timeout=TIMEOUT_S).json()["models"])
    print(f"Models: {models}")
    address = requests.post(
        controller_address + "/get_worker_address", json={"model": model_name}, timeout=TIMEOUT_S
    ).json()["address"]
    print(f"worker_addr: {address}")
    return address


def send(worker_addr: str, model_name: str, message: str, max_new_tokens: int, temperature: float = 0.7) -> str:
    """Stream the answer to ``message`` (vicuna_v0's prompt, as upstream) onto stdout; return its last text."""
    from llava.conversation import default_conversation

    conv = default_conversation.copy()
    conv.append_message(conv.roles[0], message)
    prompt = conv.get_prompt()
    payload = {
        "model": model_name,
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "stop": conv.sep,
    }
    reply = requests.post(
        worker_addr + "/worker_generate_stream",
        headers={"User-Agent": "LLaVA Client"},
        json=payload,
        stream=True,
        timeout=TIMEOUT_S,
    )
    print(prompt.replace(conv.sep, "\n"), end="")
    output = ""
    for data in split_chunks(reply.iter_content(chunk_size=CHUNK_SIZE)):
        if data["error_code"] != 0:
            print(f"\nerror {data['error_code']}: {data['text']}")
            return data["text"]
        output = data["text"].split(conv.sep)[-1]
        print(output, end="\r")
    print("")
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controller-address", type=str, default="http://localhost:21001")
    parser.add_argument("--worker-address", type=str)
    parser.add_argument("--model-name", type=str, default="facebook/opt-350m")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--message", type=str, default="Tell me a story with more than 1000 words.")
    args = parser.parse_args(argv)
    address = args.worker_address or worker_address(args.controller_address, args.model_name)
    if not address:
        sys.exit(f"no worker serves {args.model_name}")
    send(address, args.model_name, args.message, args.max_new_tokens)


if __name__ == "__main__":
    main()
