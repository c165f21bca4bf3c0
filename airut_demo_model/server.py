"""airut-demo-model: a local server speaking Anthropic's Messages API with scripted turns.

It lets airut run end to end with no API key (`make demo`), and it stands in for
Anthropic in the tests: the real Claude Code CLI talks to it unchanged. Every
request is appended to a JSON-lines log so tests can see what the agent sent.

  airut-demo-model --listen 0.0.0.0:8765 --log requests.jsonl --scenarios DIR
  ... --listen-tls 127.0.0.1:443 --cert server.pem --key server.key   (also HTTPS)

Routes other than the Messages API echo the request back, so in the test lab the
same server also plays any web server an agent may try to reach. Two routes stream,
for testing what sits in between: GET /stream/events?count=N&interval=S sends N
server-sent events S seconds apart, GET /stream/bytes?size=N&seconds=S sends N
bytes over at least S seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sdnotify

from airut_demo_model import scenarios


class Handler(BaseHTTPRequestHandler):
    server: DemoModelServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else small responses wait 40 ms for a delayed ACK

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the JSON-lines log is the record; stderr stays quiet

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.server.record(self, None)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/stream/events":
            self._events(int(query.get("count", "5")), float(query.get("interval", "0.5")))
        elif url.path == "/stream/bytes":
            self._bytes(int(query.get("size", "0")), float(query.get("seconds", "0")))
        elif self.path.startswith("/api/"):
            # Claude Code's own side calls (settings, policy limits): "nothing here"
            # ends them at once, where an unexpected 200 makes the CLI retry.
            self._json(404, _error("not_found_error", f"no route {self.path}"))
        else:
            self._json(200, self._echo(None))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        self.server.record(self, body)
        path = self.path.split("?")[0]
        if body is None:
            self._json(400, _error("invalid_request_error", "body is not JSON"))
        elif path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": _tokens(raw)})
        elif path == "/v1/messages":
            self._messages(body, len(raw))
        else:
            self._json(200, self._echo(body))

    def _echo(self, body: Any) -> dict:
        """Any other route answers with what it received: a stand-in for any web server."""
        return {"echo": True, "method": self.command, "path": self.path,
                "host": self.headers.get("Host"), "hosts": self.headers.get_all("Host", []),
                "headers": dict(self.headers.items()), "body": body}

    def _messages(self, body: dict, size: int) -> None:
        position = scenarios.Position(body.get("messages") or [])
        scenario = scenarios.load(self.server.scenario_dir, position.scenario_name())
        error = scenario.get("error")
        if error and (position.resumed or not scenario.get("error_only_when_resumed")):
            self._json(int(error.get("status", 500)),
                       _error(error.get("type", "api_error"), error.get("message", "error")))
            return
        turn = scenarios.next_turn(scenario, position)
        tool_names = {t.get("name") for t in body.get("tools") or []}
        if "tool" in turn and turn["tool"] not in tool_names:
            turn = {"text": f"(The scenario wanted the {turn['tool']} tool, which this "
                            "request does not offer.)"}
        message = _message(body.get("model", "demo"), turn, size)
        if body.get("stream"):
            self._stream(message, float(scenario.get("stall_seconds") or 0))
        else:
            self._json(200, message)

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status in (429, 529):
            self.send_header("retry-after", "1")
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, message: dict, stall: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**message["usage"], "output_tokens": 1}}
        self._event("message_start", {"type": "message_start", "message": start})
        if stall:
            time.sleep(stall)  # a stalled stream, finished afterwards as real ones are
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                self._event("content_block_start", {"type": "content_block_start", "index": index,
                                                    "content_block": {"type": "text", "text": ""}})
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                self._event("content_block_start", {
                    "type": "content_block_start", "index": index,
                    "content_block": {**block, "input": {}}})
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": delta})
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        self._event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]}})
        self._event("message_stop", {"type": "message_stop"})

    def _events(self, count: int, interval: float) -> None:
        """Server-sent events spaced in time: what a proxy must pass on as they come."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for i in range(count):
            if i:
                time.sleep(interval)
            self._event("tick", {"n": i, "sent": time.time()})

    def _bytes(self, size: int, seconds: float) -> None:
        """A download of `size` bytes, written as it goes, spread over at least
        `seconds` (a download that is still running while other things happen)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk, sent, start = bytes(1 << 16), 0, time.monotonic()
        while sent < size:
            n = min(len(chunk), size - sent)
            ahead = start + seconds * (sent + n) / size - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            self.wfile.write(chunk[:n])
            sent += n

    def _event(self, name: str, data: dict) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


def _tokens(raw: bytes | str) -> int:
    return max(1, len(raw) // 4)


def _error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _message(model: str, turn: dict, request_size: int) -> dict:
    if "tool" in turn:
        block = {"type": "tool_use", "id": f"toolu_{secrets.token_hex(12)}",
                 "name": turn["tool"], "input": turn.get("input", {})}
        stop, out = "tool_use", json.dumps(block["input"])
    else:
        block = {"type": "text", "text": turn.get("text", "")}
        stop, out = "end_turn", block["text"]
    return {"id": f"msg_{secrets.token_hex(12)}", "type": "message", "role": "assistant",
            "model": model, "content": [block], "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": _tokens("x" * request_size), "output_tokens": _tokens(out),
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


class DemoModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], log: Path | None, scenario_dir: Path | None):
        super().__init__(address, Handler)
        self.log_path = log
        self.scenario_dir = scenario_dir
        self._lock = threading.Lock()

    def record(self, handler: Handler, body: Any) -> None:
        if not self.log_path:
            return
        entry = {"time": time.time(), "method": handler.command, "path": handler.path,
                 "headers": dict(handler.headers.items()),
                 "hosts": handler.headers.get_all("Host", []), "body": body}
        with self._lock, self.log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut-demo-model", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", action="append", default=[],
                        help="HOST:PORT for plain HTTP (port 0: any); repeatable")
    parser.add_argument("--listen-tls", action="append", default=[],
                        help="HOST:PORT for HTTPS with --cert and --key; repeatable")
    parser.add_argument("--cert", help="PEM certificate chain for --listen-tls")
    parser.add_argument("--key", help="PEM private key for --listen-tls")
    parser.add_argument("--log", type=Path, help="append every request to this JSON-lines file")
    parser.add_argument("--scenarios", type=Path, help="directory of NAME.json scenarios")
    parser.add_argument("--port-file", type=Path, help="write the first bound port here")
    args = parser.parse_args(argv)
    if args.listen_tls and not (args.cert and args.key):
        parser.error("--listen-tls needs --cert and --key")
    servers = []
    for address in args.listen or ([] if args.listen_tls else ["127.0.0.1:8765"]):
        servers.append(DemoModelServer(_address(address), args.log, args.scenarios))
    for address in args.listen_tls:
        server = DemoModelServer(_address(address), args.log, args.scenarios)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        servers.append(server)
    if args.port_file:
        args.port_file.write_text(f"{servers[0].server_address[1]}\n")
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    bound = ", ".join(f"{s.server_address[0]}:{s.server_address[1]}" for s in servers)
    print(f"airut-demo-model listening on {bound}", file=sys.stderr)
    sdnotify.SystemdNotifier().notify(f"READY=1\nSTATUS=listening on {bound}")
    with contextlib.suppress(KeyboardInterrupt):
        servers[0].serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


if __name__ == "__main__":
    main()
