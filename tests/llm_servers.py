"""Local LLM servers for the tests: an OpenAI-compatible and an Anthropic-compatible HTTP server on 127.0.0.1.

They speak the real wire protocol (the official SDKs talk to them unchanged: `GET /v1/models`, `POST
/v1/chat/completions`, `POST /v1/messages`) and replay a script: each model request takes the next entry, which is
either the answer's text, or a dict `{"status": 429|500, "delay": s, "text": ...}` for errors and slow answers. When
the script runs out, `default` is answered. Every request is recorded (`requests`) for the assertions.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EMPTY = json.dumps({"proposals": [], "notes": []})


class ScriptedLLMServer:
    """`with ScriptedLLMServer("openai", [...]) as srv:` ... `srv.base_url` (ends in /v1 for openai)."""

    def __init__(self, kind: str, script: list[Any] | None = None, default: str = EMPTY, model: str = "test-model"):
        assert kind in ("openai", "anthropic")
        self.kind, self.model, self.default = kind, model, default
        self.script = list(script or [])
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                server._record(self, None)
                if self.path.split("?")[0].rstrip("/") == "/v1/models":
                    return self._json(200, server._models())
                return self._json(404, {"error": {"message": "not found", "type": "not_found"}})

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                path = self.path.split("?")[0].rstrip("/")
                want = "/v1/chat/completions" if server.kind == "openai" else "/v1/messages"
                if path != want:
                    return self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
                server._record(self, body)
                if not server._authorized(self):
                    return self._json(401, server._error(401, "invalid api key"))
                entry = server._next()
                if isinstance(entry, str):
                    entry = {"text": entry}
                if entry.get("delay"):
                    time.sleep(entry["delay"])
                status = entry.get("status", 200)
                if status != 200:
                    return self._json(status, server._error(status, entry.get("text", "scripted error")),
                                      {"retry-after": "0.05"})
                return self._json(200, server._answer(body, entry["text"]))

            def _json(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- protocol ----------------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}" + ("/v1" if self.kind == "openai" else "")

    def _authorized(self, h) -> bool:
        if self.kind == "openai":
            return h.headers.get("authorization", "").startswith("Bearer ") and len(h.headers["authorization"]) > 7
        return bool(h.headers.get("x-api-key") or h.headers.get("authorization"))

    def _models(self) -> dict[str, Any]:
        if self.kind == "openai":
            return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "test"}]}
        return {"data": [{"type": "model", "id": self.model, "display_name": "Test", "created_at": "2025-01-01T00:00:00Z"}],
                "has_more": False, "first_id": self.model, "last_id": self.model}

    def _error(self, status: int, message: str) -> dict[str, Any]:
        kind = {429: "rate_limit_error", 401: "authentication_error"}.get(status, "api_error")
        if self.kind == "openai":
            return {"error": {"message": message, "type": kind, "code": status}}
        return {"type": "error", "error": {"type": kind, "message": message}}

    def _answer(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        tin = sum(len(json.dumps(m)) for m in body.get("messages", [])) // 4 + len(str(body.get("system", ""))) // 4
        tout = max(1, len(text) // 4)
        if self.kind == "openai":
            return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", self.model),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}}
        return {"id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant",
                "model": body.get("model", self.model), "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": tin, "output_tokens": tout}}

    # -- bookkeeping -------------------------------------------------------------------------------------------------
    def _record(self, h, body) -> None:
        with self._lock:
            self.requests.append({"method": h.command, "path": h.path, "body": body, "at": time.time()})

    def _next(self) -> Any:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    @property
    def model_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def __enter__(self) -> "ScriptedLLMServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(*proposals: dict[str, Any], notes: list[str] | None = None, fence: bool = False) -> str:
    """An answer in the wire contract."""
    text = json.dumps({"proposals": list(proposals), "notes": notes or []}, indent=1)
    return f"Here are my proposals.\n```json\n{text}\n```\n" if fence else text


def knob_edit(search: str, replace: str, description: str, file: str = "train.py") -> dict[str, Any]:
    return {"description": description, "hypothesis": "test", "edits": [{"file": file, "search": search,
                                                                           "replace": replace}]}
