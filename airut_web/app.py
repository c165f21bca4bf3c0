"""The dashboard's routes (bottle). Pages are rendered on the server and readable
without JavaScript; app.js refreshes each page's <main> by asking for it again with
X-Airut-Live and If-None-Match (unchanged: 304, nothing sent). The one mutating
route, stop, needs a custom header and the page's own origin."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import bottle

from airut_core import paths, tasks
from airut_web import charts, render
from airut_web.state import BLOCKED_HINT, State, stoppable

logger = logging.getLogger("airut.web")

HERE = Path(__file__).parent
VIEWS = str(HERE / "views")
STATIC = HERE / "static"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css",
                "favicon.svg": "image/svg+xml"}
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "airut-dashboard"
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
     "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
     "frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]
HELPERS = {name: getattr(render, name) for name in (
    "when", "epoch", "badge", "duration", "age", "money", "size", "number", "short")}


def make_app(state: State) -> bottle.Bottle:
    app = bottle.Bottle()
    app.config["json.enable"] = False

    def render_page(name: str, title: str, fragment: bool, live: bool, **values) -> str:
        return bottle.template(name, template_lookup=[VIEWS], title=title, fragment=fragment,
                               live=live, repos=sorted(state.cfg.repos), WAITING=tasks.WAITING,
                               **HELPERS, **values)

    def page(name: str, title: str, live: bool = True, **values) -> str:
        fragment = bottle.request.headers.get("X-Airut-Live") == "1"
        return _conditional(render_page(name, title, fragment, live, **values),
                            "text/html; charset=utf-8")

    @app.get("/")
    def overview():
        o = state.overview()
        return page("overview", "airut", overview=o, charts={
            "tasks": charts.bars([d[5:] for d in o.days], o.per_day,
                                 "Tasks per day by outcome, last 30 days (UTC)"),
            "cost": charts.bars([d[5:] for d in o.days], {"cost": o.cost_per_day},
                                "Model cost per day, last 30 days (UTC)",
                                fmt=lambda v: f"${v:.2f}")})

    @app.get("/task/<task_id>")
    def task(task_id: str):
        view = state.task(_checked(paths.TASK_ID, task_id))
        if view is None:
            bottle.abort(404, "No such task.")
        memory = [(s.t, s.memory) for s in view.samples if s.memory is not None]
        cpu = _cpu_percent(view.samples)
        mem_limit = view.limits.get("memory") if isinstance(view.limits.get("memory"), int) \
            else None
        cpus = view.limits.get("cpus")
        return page("task", f"task {task_id}", live=view.line.outcome in tasks.WAITING
                    or view.stop_pending, view=view,
            hint=BLOCKED_HINT, charts={
                "memory": charts.line(memory, "Memory of the task's cgroup", render.size,
                                      limit=mem_limit),
                "cpu": charts.line(cpu, "CPU of the task's cgroup, % of one core",
                                   lambda v: f"{v:.0f}%",
                                   limit=cpus * 100 if isinstance(cpus, int | float) else None)})

    @app.get("/conversation/<cid>")
    def conversation(cid: str):
        found = state.conversation(_checked(paths.CONVERSATION_ID, cid))
        if found is None:
            bottle.abort(404, "No such conversation.")
        conv, waiting = found
        return page("conversation", f"conversation {cid}", conv=conv, waiting=waiting)

    @app.get("/repo/<repo_id>")
    def repo(repo_id: str):
        found = state.repo(_checked(paths.REPO_ID, repo_id))
        if found is None:
            bottle.abort(404, "No such repository.")
        return page("repo", f"repository {repo_id}", r=found)

    @app.get("/api/health")
    def health():
        h = state.health()
        bottle.response.status = 200 if h["status"] == "ok" else 503
        return _json(h)

    @app.get("/api/tasks")
    def api_tasks():
        repo = bottle.request.query.get("repo") or None
        found = [t for t in state.all_tasks() if repo is None or t.repo == repo]
        return _json({"tasks": [asdict(t) for t in found[:1000]]})

    @app.post("/api/task/<task_id>/stop")
    def stop(task_id: str):
        _same_origin()
        found = state.find(_checked(paths.TASK_ID, task_id))
        if found is None:
            bottle.abort(404, "No such task.")
        line, _, stop_pending = found
        if not stoppable(line, stop_pending):
            bottle.response.status = 409
            return _json({"task": task_id, "state": line.outcome,
                          "error": f"the task is {line.outcome}: nothing to stop"})
        who = f"dashboard ({bottle.request.remote_addr or 'unknown'})"
        state.request_stop(task_id, who)
        logger.info("stop of task %s requested from the dashboard (%s)", task_id,
                    bottle.request.remote_addr)
        bottle.response.status = 202
        return _json({"task": task_id, "state": "stopping"})

    @app.get("/static/<name>")
    def static(name: str):
        if name not in STATIC_FILES:
            bottle.abort(404, "Not found.")
        bottle.response.set_header("Cache-Control", "max-age=300")
        return _conditional(_static(name), STATIC_FILES[name])

    @app.get("/favicon.ico")
    def favicon():
        return static("favicon.svg")

    def error_page(error: bottle.HTTPError) -> str:
        if bottle.request.path.startswith("/api/"):
            bottle.response.content_type = "application/json"
            return json.dumps({"error": str(error.body)})
        return render_page("error", f"{error.status}", False, False, error=error)

    for code in (400, 403, 404, 405, 409, 500):
        app.error(code)(error_page)
    return app


@functools.cache
def _static(name: str) -> str:
    """A file of the package's own, read once: the watchdog asks for one every 10 s."""
    return (STATIC / name).read_text()


def _checked(pattern, value: str) -> str:
    """A path parameter must be one of airut's ids: nothing else reaches a path."""
    if not pattern.match(value):
        bottle.abort(404, "Not found.")
    return value


def _same_origin() -> None:
    """The CSRF guard: a header no cross-site form can send (and no cross-origin script
    may, without a preflight we never grant), and the page's own origin when the
    browser says where the request comes from."""
    headers = bottle.request.headers
    if headers.get(CSRF_HEADER) != CSRF_VALUE:
        bottle.abort(403, f"A request that changes something needs the {CSRF_HEADER} header.")
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        bottle.abort(403, "Cross-site requests are refused.")
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.netloc.lower() != (headers.get("Host") or "").lower() or \
                parts.scheme not in ("http", "https"):
            bottle.abort(403, "Requests from another origin are refused.")


def _json(value: object) -> str:
    bottle.response.content_type = "application/json"
    bottle.response.set_header("Cache-Control", "no-store")
    return json.dumps(value, indent=1)


def _conditional(body: str, content_type: str) -> str:
    """Body with an ETag; 304 and nothing when the client has this version."""
    tag = '"' + hashlib.blake2b(body.encode(), digest_size=12).hexdigest() + '"'
    bottle.response.content_type = content_type
    bottle.response.set_header("ETag", tag)
    bottle.response.set_header("Vary", "X-Airut-Live")
    if tag in bottle.request.headers.get("If-None-Match", ""):
        bottle.response.status = 304
        return ""
    return body


def _cpu_percent(samples) -> list[tuple[float, float]]:
    """CPU use between samples, in % of one core."""
    points = []
    for a, b in itertools.pairwise(samples):
        if a.cpu_usec is None or b.cpu_usec is None or b.t <= a.t:
            continue
        points.append((b.t, max(0.0, (b.cpu_usec - a.cpu_usec) / 1e6 / (b.t - a.t) * 100)))
    return points


def secure(app):
    """WSGI middleware: the security headers on every answer, errors included."""
    def wrapped(environ, start_response):
        def start(status, headers, exc_info=None):
            names = {h[0].lower() for h in headers}
            headers = [*headers, *(h for h in SECURITY_HEADERS if h[0].lower() not in names)]
            return start_response(status, headers, exc_info)
        return app(environ, start)
    return wrapped
