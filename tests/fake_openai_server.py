"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for controller tests.

    with FakeOpenAI() as srv:
        srv.push(tool_calls(("calibrate", {"device": 0, "model": "gptj-6b"})), http_error(500))
        ...  # point the LLM controller at srv.url
        srv.requests  # what it received: [{"path", "headers" (lower-case names), "body"}]

Each POST /v1/chat/completions pops the next behaviour from the queue (when the queue is
empty it answers `default`, plain text without tool calls). A behaviour is a dict built
by the helpers below: a status, a body (bytes), a content type and a delay in seconds,
or a function of the request headers returning one.
"""
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}


def _completion(message: dict, finish: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE}).encode()


def reply(status=200, body=b"", content_type="application/json", delay_s=0.0) -> dict:
    """A raw behaviour: answer `body` with `status` after `delay_s` seconds."""
    return {"status": status, "body": body, "content_type": content_type, "delay_s": delay_s}


def tool_calls(*calls, delay_s=0.0) -> dict:
    """An assistant reply calling tools; each call is (name, arguments) where arguments is
    a dict (sent as a JSON string) or a str (sent verbatim, e.g. non-JSON)."""
    tcs = [{"id": f"call_{i}", "type": "function",
            "function": {"name": name,
                         "arguments": args if isinstance(args, str) else json.dumps(args)}}
           for i, (name, args) in enumerate(calls)]
    return reply(body=_completion({"role": "assistant", "content": None, "tool_calls": tcs},
                                  "tool_calls"), delay_s=delay_s)


def text(content="No action needed.", delay_s=0.0) -> dict:
    """An assistant reply with plain text and no tool calls."""
    return reply(body=_completion({"role": "assistant", "content": content}, "stop"),
                 delay_s=delay_s)


def http_error(status: int, message="fake error") -> dict:
    """An OpenAI-style error reply with HTTP `status` (e.g. 429, 500)."""
    return reply(status, json.dumps({"error": {"message": message, "type": "fake"}}).encode())


def slow(seconds: float) -> dict:
    """A valid (empty) reply that arrives only after `seconds`."""
    return text("too late", delay_s=seconds)


def garbage() -> dict:
    """A 200 reply whose body is not JSON at all."""
    return reply(body=b"<html>\x00\xff this is not json", content_type="application/json")


def echo_key_in_error(headers) -> dict:
    """A 500 whose error message repeats the request's Authorization header."""
    return http_error(500, "bad key " + headers.get("Authorization", ""))


def echo_key_in_arguments(headers) -> dict:
    """A tool call whose arguments carry the request's Authorization header."""
    return tool_calls(("calibrate", {"device": 0, "model": headers.get("Authorization", "")}),
                      ("set_risk_gate", headers.get("Authorization", "")))


def assert_not_leaked(secret: str, folder, *texts) -> None:
    """`secret` is in no file under `folder` and in none of `texts` (printed output)."""
    from pathlib import Path
    for f in Path(folder).rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    for t in texts:
        assert secret not in t


class FakeOpenAI:
    """The server; `default` answers when the queue is empty (see module docstring)."""

    def __init__(self, default=None):
        self.default = default or text()
        self.queue = queue.Queue()
        self.requests = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with server._lock:
                    server.requests.append({"path": self.path, "body": body, "headers": {
                        k.lower(): v for k, v in self.headers.items()}})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(http_error(404, f"no route {self.path}"))
                try:
                    b = server.queue.get_nowait()
                except queue.Empty:
                    b = server.default
                if callable(b):  # a behaviour that depends on the request headers
                    b = b(self.headers)
                self._send(b)

            def _send(self, b):
                time.sleep(b["delay_s"])
                try:
                    self.send_response(b["status"])
                    self.send_header("Content-Type", b["content_type"])
                    self.send_header("Content-Length", str(len(b["body"])))
                    self.end_headers()
                    self.wfile.write(b["body"])
                except OSError:  # the client gave up (timeout): nothing to do
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL for the OpenAI client, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def push(self, *behaviours) -> "FakeOpenAI":
        """Queue behaviours, answered in order by the next requests."""
        for b in behaviours:
            self.queue.put(b)
        return self

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
