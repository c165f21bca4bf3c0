"""The dashboard over real HTTP (waitress, as airut-web serves it) on a state written
the way the daemons write it: pages, escaping, ids, the stop request and its CSRF
guard, health, conditional requests, headers."""

from __future__ import annotations

import http.client
import json
import re
import threading
from pathlib import Path

import pytest
import waitress

from airut_core import paths
from airut_web.app import CSRF_HEADER, CSRF_VALUE, SECURITY_HEADERS, make_app, secure
from airut_web.state import State
from airut_web.systemd import Units, UnitState
from tests import webstate

pytestmark = pytest.mark.unit

XSS = '<script>alert(1)</script><img src=x onerror="alert(2)"><a href="javascript:alert(3)">x</a>'


class ListedUnits(Units):
    """systemd's answer for the unit tests (the system tests ask the real one)."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = [UnitState("airut-runner.service", "active", "running",
                                 status="0 running, 0 waiting"),
                       UnitState("airut-email@demo.service", "active", "running",
                                 status="idle: waiting for mail")]

    def _list(self, patterns, details):
        return list(self.listed)


class Server:
    def __init__(self, state: State):
        self.state = state
        self.server = waitress.create_server(secure(make_app(state)), host="127.0.0.1",
                                             port=0, threads=4)
        self.port = self.server.effective_port
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, headers: dict | None = None,
                body: bytes | None = None) -> tuple[int, dict, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        text = r.read().decode()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, text

    def get(self, path: str, **headers) -> tuple[int, dict, str]:
        return self.request("GET", path, headers)

    def stop(self, task: str, headers: dict | None = None) -> tuple[int, dict, str]:
        return self.request("POST", f"/api/task/{task}/stop", headers)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def built(tmp_path: Path) -> webstate.Built:
    return webstate.build(tmp_path, finished=12)


@pytest.fixture
def web(built):
    units = ListedUnits()
    units.error = None
    server = Server(State(built.cfg, units))
    yield server
    server.close()


def same_origin(web: Server) -> dict:
    return {CSRF_HEADER: CSRF_VALUE, "Origin": f"http://127.0.0.1:{web.port}",
            "Host": f"127.0.0.1:{web.port}", "Sec-Fetch-Site": "same-origin"}


def control_records(built) -> list[dict]:
    control = paths.Spool(built.cfg.paths.spool).control
    return [control.read(n) for n in control.names()]


# -- pages ----------------------------------------------------------------------------


def test_overview_shows_waiting_running_and_recent_tasks_with_units_and_depths(built, web):
    running_conv = built.conversations[0]
    running = webstate.run(built.cfg, running_conv)
    queued = webstate.queue(built.cfg, conversation_id=running_conv)  # a follow-up
    status, headers, page = web.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert f'href="/task/{running}"' in page and f'href="/task/{queued}"' in page
    assert "follow-up" in page
    assert ">running<" in page and ">queued<" in page
    assert built.finished[-1] in page or any(t in page for t in built.finished)
    assert "airut-email@demo.service" in page and "idle: waiting for mail" in page
    assert re.search(r"<td>incoming</td><td class=\"num\">1</td>", page)
    assert page.count('<svg class="chart"') == 2


def test_task_page_shows_the_actions_in_order_the_network_and_the_samples(built, web):
    task = built.finished[0]
    status, _, page = web.get(f"/task/{task}")
    assert status == 200
    assert page.index(">Bash<") < page.index("Looked around.") < page.index("Result")
    assert "README.md" in page  # the tool's result, folded
    assert "BLOCKED" in page and "other.test /probe" in page and "allowlist" in page
    assert '<td class="detail"><code>POST api.anthropic.com /v1/messages -&gt; 200</code>' in page
    assert '<dd class="samples">5</dd>' in page and 'class="series"' in page
    assert "Reply as sent" in page and "Please do the thing." in page


def test_a_running_task_page_grows_as_the_agent_writes(built, web):
    cid = built.conversations[1]
    task = webstate.run(built.cfg, cid, webstate.events([{"text": "first step"}])[:2])
    _, _, page = web.get(f"/task/{task}")
    assert "first step" in page and "second step" not in page and 'data-live="on"' in page
    assert '<button class="stop" type="button"' in page
    cdir = paths.conversation_dir(built.cfg.paths.state, cid)
    with open(cdir / "events.jsonl", "ab") as f:
        f.write(json.dumps(webstate.events([{"text": "second step"}])[1]).encode() + b"\n")
        f.write(b'{"type": "assistant", "message": {"content": [{"type": "text", "text": "thi')
    _, _, page = web.get(f"/task/{task}")
    assert "second step" in page and "thi" not in re.sub(r"<[^>]+>", "", page).split(
        "second step")[1].split("Network")[0]  # a line still being written waits


def test_conversation_and_repository_pages(built, web):
    cid = built.conversations[0]
    status, _, page = web.get(f"/conversation/{cid}")
    assert status == 200 and "Please do the thing." in page and "Done (" in page
    status, _, page = web.get("/repo/demo")
    assert status == 200 and "airut@corp.test" in page and "airut-repo:0123456789abcdef0123" in page
    assert web.get("/repo/nope")[0] == 404


def test_api_tasks_lists_every_task_as_json(built, web):
    webstate.queue(built.cfg)
    status, headers, body = web.get("/api/tasks")
    data = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert len(data["tasks"]) == len(built.finished) + 1
    assert {t["outcome"] for t in data["tasks"]} >= {"queued", "success"}
    assert len(json.loads(web.get("/api/tasks?repo=other")[2])["tasks"]) < len(data["tasks"])


# -- what others wrote is shown, never obeyed ---------------------------------------


def test_hostile_text_everywhere_renders_inert(built, web):
    state = Path(built.cfg.paths.state)
    tid = webstate.task_id(999, webstate.datetime.now(webstate.UTC))
    webstate.add_finished(state, "0000abcd", "demo", [(tid, webstate.datetime.now(
        webstate.UTC), "success", webstate.events(
        [{"tool": "Bash", "input": {"command": XSS}, "output": XSS}, {"text": XSS}],
        result=XSS))], request=XSS, sender=f"{XSS}@corp.test")
    with open(paths.conversation_dir(state, "0000abcd") / "network.log", "a") as f:
        f.write(f"2026-12-02T10:00:00.000Z {tid} BLOCKED GET evil.test /{XSS} -> 403 (host)\n")
    queued = webstate.queue(built.cfg, text=XSS, sender=XSS)
    for path in ("/", f"/task/{tid}", "/conversation/0000abcd", f"/task/{queued}",
                 "/repo/demo"):
        status, _, page = web.get(path)
        assert status == 200, path
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert 'href="javascript:' not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
    assert "<script" not in web.get(f"/task/{tid}")[2].replace(
        '<script src="/static/app.js" defer></script>', "")


@pytest.mark.parametrize("path", [
    "/task/..%2F..%2Fetc%2Fpasswd", "/task/../../etc/passwd", "/task/a.b", "/task/-x",
    "/conversation/../../x", "/conversation/ABCDEF12", "/conversation/1234567",
    "/repo/..", "/repo/a%2Fb", "/static/../app.py", "/static/state.py", "/task/" + "a" * 65])
def test_paths_outside_the_id_patterns_answer_404(web, path):
    status, headers, _ = web.get(path)
    assert status == 404, path
    assert headers["x-frame-options"] == "DENY"


def test_security_headers_on_every_answer(built, web):
    for method, path, headers in (("GET", "/", {}), ("GET", "/static/app.js", {}),
                                  ("GET", "/task/nope-nope", {}),
                                  ("POST", f"/api/task/{built.finished[0]}/stop", {}),
                                  ("GET", "/api/health", {})):
        _, got, _ = web.request(method, path, headers)
        for name, value in SECURITY_HEADERS:
            assert got[name.lower()] == value, (path, name)
    csp = dict(SECURITY_HEADERS)["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


# -- stop -----------------------------------------------------------------------------


def test_stop_writes_one_control_record_for_a_running_task(built, web):
    task = webstate.run(built.cfg, built.conversations[2])
    status, _, body = web.stop(task, same_origin(web))
    assert status == 202 and json.loads(body)["state"] == "stopping"
    records = control_records(built)
    assert [r["task_id"] for r in records] == [task]
    assert records[0]["schema"] == "airut.control/1" and records[0]["action"] == "stop"
    assert records[0]["requested_by"].startswith("dashboard (")
    _, _, page = web.get(f"/task/{task}")
    assert ">stopping<" in page and '<button class="stop"' not in page
    assert web.stop(task, same_origin(web))[0] == 409  # asked already
    assert len(control_records(built)) == 1


def test_stop_of_a_queued_task_and_of_a_finished_one(built, web):
    queued = webstate.queue(built.cfg)
    assert web.stop(queued, same_origin(web))[0] == 202
    status, _, body = web.stop(built.finished[0], same_origin(web))
    assert status == 409 and "nothing to stop" in json.loads(body)["error"]
    assert web.stop("20991231T000000000-ffffff", same_origin(web))[0] == 404
    assert [r["task_id"] for r in control_records(built)] == [queued]


@pytest.mark.parametrize("change", [
    {CSRF_HEADER: None}, {CSRF_HEADER: "XMLHttpRequest"}, {"Origin": "http://evil.test"},
    {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://127.0.0.1:1"}])
def test_stop_without_the_header_or_from_elsewhere_is_refused_and_writes_nothing(
        built, web, change):
    task = webstate.run(built.cfg, built.conversations[2])
    headers = {k: v for k, v in {**same_origin(web), **change}.items() if v is not None}
    status, _, body = web.stop(task, headers)
    assert status == 403, body
    assert control_records(built) == []
    assert web.request("GET", f"/api/task/{task}/stop")[0] == 405


# -- health ---------------------------------------------------------------------------


def test_health_turns_degraded_on_a_failed_unit_or_a_quarantined_record(built, web):
    status, _, body = web.get("/api/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    web.state.units.listed[0] = UnitState("airut-runner.service", "failed", "failed",
                                          result="exit-code")
    web.state.units._cache.clear()
    status, _, body = web.get("/api/health")
    assert status == 503 and json.loads(body)["reasons"] == [
        "airut-runner.service failed (exit-code)"]
    web.state.units.listed[0] = UnitState("airut-runner.service", "active", "running")
    web.state.units._cache.clear()
    failed = paths.Spool(built.cfg.paths.spool).failed("email-demo").ensure()
    failed.put("x", {"schema": "airut.reply/1"})
    status, _, body = web.get("/api/health")
    assert status == 503 and json.loads(body)["reasons"] == ["1 record(s) in failed/email-demo"]
    failed.remove("x")
    assert web.get("/api/health")[0] == 200
    web.state.units.listed[1].status = "degraded: IMAP login failed; retrying in 30 s"
    web.state.units._cache.clear()
    assert "is degraded" in json.loads(web.get("/api/health")[2])["reasons"][0]


def test_a_degraded_slack_channel_shows_on_its_repository_and_in_health(built, web):
    web.state.units.listed.append(UnitState(
        "airut-slack@other.service", "active", "running",
        status="degraded: the Socket Mode connection is down"))
    web.state.units._cache.clear()
    status, _, page = web.get("/repo/other")
    assert status == 200 and "Slack app (Socket Mode)" in page
    assert "the Socket Mode connection is down" in page
    reasons = json.loads(web.get("/api/health")[2])["reasons"]
    assert reasons == ["airut-slack@other.service is degraded: "
                       "degraded: the Socket Mode connection is down"]


# -- live -----------------------------------------------------------------------------


def test_live_refresh_is_conditional_and_sends_only_main(built, web):
    status, headers, page = web.get("/", **{"X-Airut-Live": "1"})
    assert status == 200 and page.startswith("<main") and "<html" not in page
    etag = headers["etag"]
    status, _, body = web.get("/", **{"X-Airut-Live": "1", "If-None-Match": etag})
    assert status == 304 and body == ""
    webstate.queue(built.cfg)
    status, headers, _ = web.get("/", **{"X-Airut-Live": "1", "If-None-Match": etag})
    assert status == 200 and headers["etag"] != etag


def test_a_task_whose_image_is_being_built_shows_building(built, web):
    task = webstate.run(built.cfg, built.conversations[3])
    spool = paths.Spool(built.cfg.paths.spool)
    record = spool.active.read(task)
    del record["state"]["unit"]  # prepared, not started: waiting for its image
    record["state"]["image"] = "localhost/airut-repo:0123456789abcdef0123"
    spool.active.put(task, record)
    assert row_badge(web.get("/")[2], task) == "preparing"
    web.state.units.listed.append(UnitState("airut-build-0123456789abcdef0123.service",
                                            "active", "running"))
    web.state.units._cache.clear()
    assert row_badge(web.get("/")[2], task) == "building"


def row_badge(page: str, task: str) -> str:
    row = page[page.index(f'href="/task/{task}"'):]
    return re.search(r'<span class="badge [a-z]+">([^<]+)</span>', row).group(1)


@pytest.mark.parametrize(("host", "quiet"), [("127.0.0.1", True), ("::1", True),
                                             ("localhost", True), ("127.0.0.2", True),
                                             ("0.0.0.0", False), ("::", False),
                                             ("192.168.1.5", False), ("web.example", False)])
def test_only_a_loopback_address_listens_without_a_warning(host, quiet):
    from airut_web.daemon import loopback

    assert loopback(host) is quiet
