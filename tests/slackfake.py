"""A local Slack for the tests: the Web API over HTTP and Socket Mode over a websocket,
on one port, driven by the real slack-sdk client.

Faithful where the client depends on it: `apps.connections.open` hands out a
single-use ws:// URL; the socket says `hello`; each event is an `events_api`
envelope that is redelivered with `retry_attempt` + 1 until the client acknowledges
it by envelope_id (at most three redeliveries, like Slack); `disconnect` with
`refresh_requested` asks the client to reconnect; an unacked envelope goes to the
next connection; every method checks the bearer token; answers are Slack's shapes
(ok/error, 429 with Retry-After on demand); `files_upload_v2`'s flow
(files.getUploadURLExternal, the upload, files.completeUploadExternal) leaves a file
in the thread; files are served to the bot token only.

It runs in a thread of the test process with its own event loop; tests call its
methods from their own thread. It can listen on a socket made elsewhere (in the lab
guest's network namespace, for the daemon there).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-test-bot-token"
APP_TOKEN = "xapp-test-app-token"
TEAM = "T0AIRUT"
BOT_USER = "U0AIRUTBOT"


@dataclass
class Call:
    method: str
    args: dict
    token: str
    time: float = field(default_factory=time.monotonic)


@dataclass
class Pending:
    envelope: dict
    acked: asyncio.Event
    attempts: int = 0
    lost_acks: int = 0
    pushed: float = field(default_factory=time.monotonic)
    acked_at: float | None = None


class FakeSlack:
    def __init__(self, sock: socket.socket | None = None, ack_timeout: float = 1.5,
                 max_redeliveries: int = 3):
        self.ack_timeout = ack_timeout
        self.max_redeliveries = max_redeliveries
        self.calls: list[Call] = []
        self.users: dict[str, dict] = {}
        self.groups: list[dict] = []
        self.messages: dict[str, list[dict]] = {}  # channel -> messages
        self.reactions: dict[tuple[str, str], set[str]] = {}
        self.files: dict[str, bytes] = {}  # path under /files/ -> bytes
        self.uploads: dict[str, dict] = {}
        self.failures: dict[str, list[tuple[int, str | None, float | None]]] = {}
        self.pending: dict[str, Pending] = {}
        self.connections = 0
        self.scopes = ["app_mentions:read", "assistant:write", "channels:history",
                       "chat:write", "files:read", "files:write", "groups:history",
                       "im:history", "reactions:write", "usergroups:read", "users:read"]
        self.lose_acks = 0  # acks to drop on the floor (the client's ack lost on the way)
        self._tickets: set[str] = set()
        self._ts = itertools.count(1)
        self._ws: web.WebSocketResponse | None = None
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._sock = sock or socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    # -- the test's side ------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://{self.host}/api/"

    def add_user(self, user_id: str, name: str, team: str = TEAM, **flags: Any) -> None:
        self.users[user_id] = {"id": user_id, "team_id": team, "name": name.lower(),
                               "deleted": False, "is_bot": False, "is_app_user": False,
                               "is_restricted": False, "is_ultra_restricted": False,
                               "profile": {"display_name": name, "real_name": name},
                               **flags}

    def add_group(self, handle: str, users: list[str]) -> None:
        self.groups.append({"id": f"S{len(self.groups):08d}", "handle": handle,
                            "users": users, "date_delete": 0})

    def fail(self, method: str, status: int = 429, error: str | None = "ratelimited",
             times: int = 1, retry_after: float | None = 1) -> None:
        """The next `times` calls of method answer with this failure."""
        with self._lock:
            self.failures.setdefault(method, []).extend([(status, error, retry_after)] * times)

    def new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def message(self, channel: str, user: str, text: str, thread_ts: str | None = None,
                kind: str = "message", files: list[dict] | None = None,
                **extra: Any) -> dict:
        """A user's message: stored in the channel (for conversations.replies) and
        returned as the event Slack would push."""
        ts = self.new_ts()
        event = {"type": kind, "channel": channel, "user": user, "text": text, "ts": ts,
                 "team": TEAM, "event_ts": ts,
                 "channel_type": "im" if channel.startswith("D") else "channel", **extra}
        if thread_ts:
            event["thread_ts"] = thread_ts
        if files:
            event["files"] = files
            event.setdefault("subtype", "file_share")
        if kind == "message":
            self.messages.setdefault(channel, []).append(dict(event))
        return event

    def file(self, name: str, data: bytes, host: str | None = None) -> dict:
        """A file someone shared: served at /files/ (to the bot token only)."""
        path = f"{uuid.uuid4().hex[:8]}/{name}"
        self.files[path] = data
        url = f"http://{host or self.host}/files/{path}"
        return {"id": f"F{uuid.uuid4().hex[:10].upper()}", "name": name, "size": len(data),
                "url_private": url, "url_private_download": url}

    def push(self, event: dict, wait: bool = True, timeout: float = 30) -> Pending:
        """Send an events_api envelope; with wait, until it is acknowledged."""
        envelope = {"envelope_id": str(uuid.uuid4()), "type": "events_api",
                    "accepts_response_payload": False, "retry_attempt": 0,
                    "retry_reason": "",
                    "payload": {"token": "x", "team_id": TEAM, "api_app_id": "A0AIRUT",
                                "type": "event_callback", "event_id": f"Ev{uuid.uuid4().hex[:10]}",
                                "event_time": int(time.time()), "event": event,
                                "authorizations": [{"team_id": TEAM, "user_id": BOT_USER,
                                                    "is_bot": True}]}}
        pending = asyncio.run_coroutine_threadsafe(self._push(envelope), self.loop).result(10)
        if wait:
            self.wait_ack(pending, timeout)
        return pending

    def wait_ack(self, pending: Pending, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while pending.acked_at is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"envelope {pending.envelope['envelope_id']} not acked")
            time.sleep(0.01)

    def request_reconnect(self) -> None:
        asyncio.run_coroutine_threadsafe(self._send({"type": "disconnect",
                                                     "reason": "refresh_requested",
                                                     "debug_info": {"host": "fake"}}),
                                         self.loop).result(5)

    def drop(self) -> None:
        """Close the websocket without a word (a network failure, as the client sees it)."""
        async def close() -> None:
            if self._ws is not None:
                await self._ws.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)

    def calls_of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def thread(self, channel: str, thread_ts: str) -> list[dict]:
        return [m for m in self.messages.get(channel, [])
                if m.get("thread_ts") == thread_ts or m["ts"] == thread_ts]

    def bot_messages(self, channel: str, thread_ts: str) -> list[dict]:
        return [m for m in self.thread(channel, thread_ts) if m.get("user") == BOT_USER]

    def close(self) -> None:
        async def shutdown() -> None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)

    # -- the server -----------------------------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._link)
        app.router.add_post("/upload/{id}", self._upload)
        app.router.add_get("/files/{path:.*}", self._file)
        runner = self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.SockSite(runner, self._sock).start())
        ready.set()
        self.loop.run_forever()

    async def _push(self, envelope: dict) -> Pending:
        pending = Pending(envelope, asyncio.Event())
        self.pending[envelope["envelope_id"]] = pending
        self.loop.create_task(self._deliver(pending))
        return pending

    async def _deliver(self, pending: Pending) -> None:
        """Send, and again with retry_attempt + 1 while no ack comes (like Slack)."""
        while pending.attempts <= self.max_redeliveries:
            envelope = {**pending.envelope, "retry_attempt": pending.attempts,
                        "retry_reason": "timeout" if pending.attempts else ""}
            pending.attempts += 1
            await self._send(envelope)
            try:
                await asyncio.wait_for(pending.acked.wait(), self.ack_timeout)
                return
            except TimeoutError:
                continue

    async def _send(self, message: dict) -> None:
        for _ in range(200):  # a connection being replaced: wait for the new one
            ws = self._ws
            if ws is not None and not ws.closed:
                try:
                    await ws.send_str(json.dumps(message))
                    return
                except ConnectionError:
                    pass
            await asyncio.sleep(0.05)

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            raise web.HTTPUnauthorized(text="invalid ticket")
        self._tickets.discard(ticket)  # single use, like Slack's
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self.connections += 1
        self._ws = ws
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1,
                                      "connection_info": {"app_id": "A0AIRUT"}}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                continue
            pending = self.pending.get(data.get("envelope_id", ""))
            if pending is not None and self.lose_acks > 0:
                self.lose_acks -= 1
                pending.lost_acks += 1
                continue
            if pending is not None and pending.acked_at is None:
                pending.acked_at = time.monotonic()
                pending.acked.set()
        return ws

    async def _args(self, request: web.Request) -> dict:
        args = dict(request.query)
        if request.method == "POST":
            if request.content_type == "application/json":
                body = await request.json()
                args.update(body if isinstance(body, dict) else {})
            else:
                args.update(dict(await request.post()))
        return args

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._args(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        with self._lock:
            self.calls.append(Call(method, args, token))
            failure = self.failures.get(method, [])
            failure = failure.pop(0) if failure else None
        if failure:
            status, error, retry_after = failure
            headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
            return web.json_response({"ok": False, "error": error or "fatal_error"},
                                     status=status, headers=headers)
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        headers = {"X-OAuth-Scopes": ",".join(self.scopes)} if token == BOT_TOKEN else {}
        return web.json_response(handler(args), headers=headers)

    # Web API methods: args -> the answer.

    def _m_auth_test(self, args: dict) -> dict:
        return {"ok": True, "url": "https://airut-test.slack.com/", "team": "airut-test",
                "user": "airut", "team_id": TEAM, "user_id": BOT_USER, "bot_id": "B0AIRUT"}

    def _m_apps_connections_open(self, args: dict) -> dict:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"ok": True, "url": f"ws://{self.host}/link/?ticket={ticket}"}

    def _m_users_info(self, args: dict) -> dict:
        user = self.users.get(str(args.get("user")))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}

    def _m_usergroups_list(self, args: dict) -> dict:
        return {"ok": True, "usergroups": self.groups}

    def _m_conversations_replies(self, args: dict) -> dict:
        found = self.thread(str(args.get("channel")), str(args.get("ts")))
        return {"ok": True, "messages": found[:int(args.get("limit") or 1000)],
                "has_more": False}

    def _m_chat_postMessage(self, args: dict) -> dict:
        channel = str(args.get("channel"))
        ts = self.new_ts()
        message = {"type": "message", "user": BOT_USER, "bot_id": "B0AIRUT",
                   "text": str(args.get("text", "")), "ts": ts}
        if args.get("thread_ts"):
            message["thread_ts"] = str(args["thread_ts"])
        self.messages.setdefault(channel, []).append(message)
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _m_chat_update(self, args: dict) -> dict:
        for m in self.messages.get(str(args.get("channel")), []):
            if m["ts"] == args.get("ts"):
                m["text"] = str(args.get("text", ""))
                m.setdefault("edits", 0)
                m["edits"] += 1
                return {"ok": True, "channel": args["channel"], "ts": m["ts"]}
        return {"ok": False, "error": "message_not_found"}

    def _m_reactions_add(self, args: dict) -> dict:
        names = self.reactions.setdefault((str(args.get("channel")),
                                           str(args.get("timestamp"))), set())
        if args.get("name") in names:
            return {"ok": False, "error": "already_reacted"}
        names.add(str(args.get("name")))
        return {"ok": True}

    def _m_reactions_remove(self, args: dict) -> dict:
        names = self.reactions.get((str(args.get("channel")), str(args.get("timestamp"))),
                                   set())
        if args.get("name") not in names:
            return {"ok": False, "error": "no_reaction"}
        names.discard(str(args.get("name")))
        return {"ok": True}

    def _m_assistant_threads_setStatus(self, args: dict) -> dict:
        return {"ok": True}

    def _m_assistant_threads_setTitle(self, args: dict) -> dict:
        return {"ok": True}

    def _m_files_getUploadURLExternal(self, args: dict) -> dict:
        file_id = f"F{uuid.uuid4().hex[:10].upper()}"
        self.uploads[file_id] = {"filename": str(args.get("filename")),
                                 "length": int(args.get("length") or 0), "data": None}
        return {"ok": True, "upload_url": f"http://{self.host}/upload/{file_id}",
                "file_id": file_id}

    def _m_files_completeUploadExternal(self, args: dict) -> dict:
        items = args.get("files")
        items = json.loads(items) if isinstance(items, str) else items or []
        done = []
        for item in items:
            upload = self.uploads.get(item.get("id"))
            if upload is None or upload["data"] is None:
                return {"ok": False, "error": "file_not_found"}
            upload["title"] = item.get("title")
            done.append({"id": item["id"], "name": upload["filename"],
                         "title": item.get("title")})
        channel = str(args.get("channel_id") or args.get("channels") or "")
        if channel:
            message = {"type": "message", "user": BOT_USER, "bot_id": "B0AIRUT",
                       "text": str(args.get("initial_comment") or ""), "ts": self.new_ts(),
                       "files": done}
            if args.get("thread_ts"):
                message["thread_ts"] = str(args["thread_ts"])
            self.messages.setdefault(channel, []).append(message)
        return {"ok": True, "files": done}

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return web.Response(status=404)
        data = await request.read()
        if request.content_type == "multipart/form-data":
            form = await _multipart(request, data)
            data = form
        upload["data"] = data
        return web.Response(text=f"OK - {len(data)}")

    async def _file(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.Response(status=403)
        data = self.files.get(request.match_info["path"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")


async def _multipart(request: web.Request, raw: bytes) -> bytes:
    """The file part of a multipart upload (the SDK may send either form)."""
    import email.parser
    import email.policy
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    for part in msg.iter_parts():
        return part.get_payload(decode=True) or b""
    return raw
