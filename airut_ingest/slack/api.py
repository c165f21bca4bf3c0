"""Slack's Web API as the channel uses it: slack-sdk's WebClient, plus the two
things it leaves to the caller: downloading a file only from Slack's file hosts, and
telling a failure worth retrying from one that is not."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from airut_core.config import SlackConfig

TIMEOUT = 30.0
CHUNK = 1 << 16
# What the app does with each: read DMs, mentions and threads it is in, look people
# and groups up, answer and react, move files, show the DM status. The manifest in
# doc/slack-setup.md asks for exactly these.
SCOPES = ("app_mentions:read", "assistant:write", "channels:history", "chat:write",
          "files:read", "files:write", "groups:history", "im:history", "reactions:write",
          "usergroups:read", "users:read")


class FileRefused(Exception):
    """A file that is not fetched: a foreign host, too big, not there."""


def client(cfg: SlackConfig, patient: bool = False) -> WebClient:
    """The bot's Web API client. A patient one waits out a 429 (twice at most): for
    lookups during intake, which Slack's three-second ack leaves no time to defer."""
    handlers = [ConnectionErrorRetryHandler(max_retry_count=1)]
    if patient:
        handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
    return WebClient(token=str(cfg.bot_token), base_url=cfg.api_url, timeout=TIMEOUT,
                     retry_handlers=handlers)


def call(web: WebClient, method: str, **args: Any) -> dict:
    """A read-only method's answer data (GET, like Slack's own examples)."""
    response = web.api_call(method, http_verb="GET", params=args)
    data = response.data
    return data if isinstance(data, dict) else {}


def check_bot(cfg: SlackConfig, timeout: float = 20) -> str:
    """auth.test with the bot token, and the scopes it was granted (`airut check`)."""
    web = WebClient(token=str(cfg.bot_token), base_url=cfg.api_url, timeout=timeout)
    answer = web.auth_test()
    granted = _header(answer.headers, "x-oauth-scopes")
    who = f"bot {answer.get('user')} ({answer.get('user_id')}) in {answer.get('team')}"
    if not isinstance(granted, str):
        return f"{who}; Slack did not list the token's scopes"
    missing = sorted(set(SCOPES) - {g.strip() for g in granted.split(",")})
    if missing:
        raise ValueError(f"{who} lacks the scope(s) {', '.join(missing)}: add them to the "
                         "app (doc/slack-setup.md) and reinstall it to the workspace")
    return f"{who}, all {len(SCOPES)} scopes"


def check_app(cfg: SlackConfig, timeout: float = 20) -> str:
    """The app token opens a Socket Mode connection (the URL is not used)."""
    web = WebClient(base_url=cfg.api_url, timeout=timeout)
    web.apps_connections_open(app_token=str(cfg.app_token))
    return "Socket Mode connections can be opened"


def retry_after(error: Exception) -> float | None:
    """Seconds Slack asked to wait (a 429), if it asked."""
    if not (isinstance(error, SlackApiError) and error.response is not None
            and error.response.status_code == 429):
        return None
    try:
        return max(0.0, min(float(_header(error.response.headers, "retry-after")), 3600.0))
    except (TypeError, ValueError):
        return 30.0


def _header(headers: dict | None, name: str) -> object:
    """A response header by its lower-case name, whatever case and form it came in."""
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value[0] if isinstance(value, list) and value else value
    return None


def error_code(error: Exception) -> str:
    if isinstance(error, SlackApiError) and error.response is not None:
        data = error.response.data
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return data["error"][:100]
        return f"HTTP {error.response.status_code}"
    return type(error).__name__


def describe(error: Exception) -> str:
    if isinstance(error, SlackApiError):
        return f"Slack answered {error_code(error)}"
    return f"{type(error).__name__}: {error}"[:500]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an error: the token is not sent anywhere else


_opener = urllib.request.build_opener(_NoRedirect)


def check_file_url(cfg: SlackConfig, url: str) -> None:
    """Only Slack's file hosts, over the API's own scheme, get the bot token."""
    parts = urllib.parse.urlsplit(url)
    scheme = urllib.parse.urlsplit(cfg.api_url).scheme
    host = parts.netloc.rpartition("@")[2].lower()
    if parts.scheme != scheme or host not in {h.lower() for h in cfg.file_hosts}:
        raise FileRefused(f"not one of Slack's file hosts ({parts.scheme}://{host[:100]})")


def download(cfg: SlackConfig, url: str, target: Path, limit: int) -> int:
    """The file at url into target (created, never followed), at most limit bytes."""
    check_file_url(cfg, url)
    request = urllib.request.Request(url, headers={
        "Authorization": f"Bearer {cfg.bot_token}", "User-Agent": "airut-slack"})
    try:
        response = _opener.open(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        raise FileRefused(f"the file host answered HTTP {e.code}") from e
    with response:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FileRefused(f"{int(declared)} bytes, over the limit of {limit}")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    out.close()
                    target.unlink()
                    raise FileRefused(f"over the limit of {limit} bytes")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    return size
