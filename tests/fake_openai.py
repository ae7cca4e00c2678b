"""A tiny OpenAI-compatible server on loopback for tests: `/v1/chat/completions`, plain and
streaming (SSE `data:` chunks then `data: [DONE]`). It records every request body it gets,
and can be told to sleep (timeouts) or to fail with a status code (retries)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | Callable[[dict[str, Any]], str]


@dataclass
class FakeOpenAI:
    reply: Reply = "I could not find that in the documents."
    delay_s: float = 0.0
    fail_status: int | None = None  # answer every request with this status while set
    malformed: bool = False  # answer 200 with a body that is not a chat completion
    error_after_words: int | None = None  # streaming: send an error event after this many words
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def reset(self) -> None:
        self.reply, self.delay_s, self.fail_status = "I could not find that in the documents.", 0.0, None
        self.malformed, self.error_after_words = False, None
        self.requests.clear()

    def prompt_text(self, request: dict[str, Any]) -> str:
        return "\n".join(str(m.get("content", "")) for m in request.get("messages", []))

    def answer_for(self, request: dict[str, Any]) -> str:
        return self.reply(request) if callable(self.reply) else self.reply

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def handle(self) -> None:
                # A client that gave up (the timeout tests: the reply comes after the client's
                # timeout) closes the socket; writing to it then is expected, not a server error.
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(body)
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if not self.path.endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if fake.fail_status:
                    self._json(fake.fail_status, {"error": {"message": "fake failure", "type": "server_error"}})
                    return
                if fake.malformed:
                    self._json(200, {"id": "chatcmpl-fake", "object": "chat.completion", "choices": []})
                    return
                text = fake.answer_for(body)
                base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model", "gpt-4o")}
                if not body.get("stream"):
                    self._json(200, {**base, "object": "chat.completion", "choices": [{
                        "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = text.split(" ")
                for i, word in enumerate(words):
                    if fake.error_after_words is not None and i == fake.error_after_words:
                        error = {"error": {"message": "overloaded mid-stream", "type": "server_error"}}
                        self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
                        self.wfile.flush()
                        return
                    delta = {"role": "assistant", "content": word + (" " if i < len(words) - 1 else "")}
                    chunk = {**base, "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                end = {**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
