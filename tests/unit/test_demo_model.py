"""The offline demo model over real HTTP: the Messages API shapes the CLI relies on."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from airut_demo_model.server import DemoModelServer

TOOLS = [{"name": "Bash", "input_schema": {}}, {"name": "Write", "input_schema": {}}]


@pytest.fixture
def model(tmp_path):
    server = DemoModelServer(("127.0.0.1", 0), tmp_path / "log.jsonl", tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, tmp_path
    server.shutdown()
    server.server_close()


def post(server, body, path="/v1/messages?beta=true"):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                   "x-api-key": "sk-ant-test"})
    response = conn.getresponse()
    return response.status, response.read().decode()


def sse(text):
    events = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_demo_scenario_plays_tool_use_then_text(model):
    server, _ = model
    first = {"model": "m", "stream": True, "tools": TOOLS,
             "messages": [{"role": "user", "content": "look around"}]}
    status, body = post(server, first)
    assert status == 200
    events = sse(body)
    assert [e for e, _ in events] == ["message_start", "content_block_start",
                                      "content_block_delta", "content_block_stop",
                                      "message_delta", "message_stop"]
    block = events[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "Bash"
    assert "git log" in json.loads(events[2][1]["delta"]["partial_json"])["command"]
    assert events[4][1]["delta"]["stop_reason"] == "tool_use"

    def answered(n):
        history = [{"role": "user", "content": "look around"}]
        for i in range(n):
            history += [{"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}"}]},
                        {"role": "user", "content": [{"type": "tool_result",
                                                      "tool_use_id": f"t{i}",
                                                      "content": f"output {i}"}]}]
        return {**first, "messages": history}

    status, body = post(server, {**answered(2), "stream": False})
    message = json.loads(body)
    assert message["stop_reason"] == "end_turn"
    assert "output 1" in message["content"][0]["text"]  # the last tool result, quoted


def test_scenario_files_and_markers(model):
    server, scenarios = model
    (scenarios / "custom.json").write_text(json.dumps({"turns": [{"text": "Got: {prompt}"}]}))
    body = {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "[[scenario:custom]] hello"}]}]}
    status, text = post(server, body)
    assert json.loads(text)["content"][0]["text"] == "Got: hello"
    # A resumed conversation: the latest prompt decides, earlier turns stay in history.
    body["messages"] += [{"role": "assistant", "content": [{"type": "text", "text": "Got"}]},
                         {"role": "user", "content": "[[scenario:echo]] again"}]
    status, text = post(server, body)
    assert status == 200
    assert json.loads(text)["content"][0]["text"] == "You said: again"


def test_error_scenarios_return_api_errors(model):
    server, scenarios = model
    (scenarios / "limited.json").write_text(json.dumps(
        {"error": {"status": 429, "type": "rate_limit_error", "message": "slow down"}}))
    status, text = post(server, {"messages": [{"role": "user",
                                               "content": "[[scenario:limited]]"}]})
    assert status == 429
    assert json.loads(text)["error"] == {"type": "rate_limit_error", "message": "slow down"}


def test_requests_are_logged_with_headers(model):
    server, directory = model
    post(server, {"messages": [{"role": "user", "content": "hi"}]})
    post(server, {"input": "x"}, path="/v1/messages/count_tokens")
    log = [json.loads(line) for line in (directory / "log.jsonl").read_text().splitlines()]
    assert [e["path"] for e in log] == ["/v1/messages?beta=true", "/v1/messages/count_tokens"]
    assert log[0]["headers"]["x-api-key"] == "sk-ant-test"
    assert log[0]["body"]["messages"][0]["content"] == "hi"


def test_tool_turn_without_that_tool_falls_back_to_text(model):
    server, _ = model
    status, text = post(server, {"messages": [{"role": "user", "content": "x"}], "tools": []})
    assert status == 200
    message = json.loads(text)
    assert message["content"][0]["type"] == "text"
    assert "does not offer" in message["content"][0]["text"]


def test_builtin_error_scenarios(model):
    server, _ = model
    for status in (401, 429, 529):
        code, text = post(server, {"messages": [{"role": "user",
                                                 "content": f"[[scenario:error-{status}]]"}]})
        assert code == status
        assert json.loads(text)["type"] == "error"


def test_stalled_stream_stops_after_message_start_then_finishes(model):
    server, scenarios = model
    (scenarios / "pause.json").write_text(json.dumps({"stall_seconds": 0.5,
                                                      "turns": [{"text": "late"}]}))
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    started = time.monotonic()
    conn.request("POST", "/v1/messages", json.dumps(
        {"stream": True, "messages": [{"role": "user", "content": "[[scenario:pause]]"}]}))
    response = conn.getresponse()
    first = response.fp.readline()
    assert first == b"event: message_start\n"
    assert time.monotonic() - started < 0.4  # the start arrives at once
    rest = response.read().decode()
    assert time.monotonic() - started >= 0.5  # the rest only after the stall
    assert '"text": "late"' in rest and "message_stop" in rest


def test_streaming_routes_send_as_they_go(model):
    server, _ = model
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    start = time.monotonic()
    conn.request("GET", "/stream/events?count=3&interval=0.3")
    response = conn.getresponse()
    arrivals = [time.monotonic() - start for line in response if line.startswith(b"data:")]
    assert len(arrivals) == 3 and arrivals[0] < 0.2 and arrivals[2] - arrivals[0] >= 0.55
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    start = time.monotonic()
    conn.request("GET", "/stream/bytes?size=300000&seconds=0.3")
    body = conn.getresponse().read()
    assert body == bytes(300000) and time.monotonic() - start >= 0.3
