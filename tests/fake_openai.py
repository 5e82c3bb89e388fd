"""An OpenAI-compatible chat server on loopback for the GPT-based scorers' tests: it answers
``POST /v1/chat/completions`` with a reply computed from the request, can fail the first requests with a status of
choice, and records every request (headers and JSON body)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Recorded:
    headers: dict[str, str]  # lower-case names
    body: dict


@dataclass
class FakeOpenAI:
    reply: Callable[[dict], str]
    failures: list[int] = field(default_factory=list)  # statuses to answer the first requests with, in order
    requests: list[Recorded] = field(default_factory=list)

    def __enter__(self) -> FakeOpenAI:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(Recorded({k.lower(): v for k, v in self.headers.items()}, body))
                    status = server.failures.pop(0) if server.failures else 200
                if self.path != CHAT_PATH:
                    status = 404
                if status != 200:
                    payload = {"error": {"message": f"fake failure {status}", "type": "test", "code": status}}
                else:
                    payload = {
                        "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                        "model": body["model"], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": server.reply(body)}}],
                    }  # fmt: skip
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # a free port, never a fixed one
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
