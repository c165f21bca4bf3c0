"""Who may give the app work: the ordered `authorized` rules, after the checks no
rule overrides.

Always refused: bots and apps, deactivated users, users of another workspace (Slack
Connect), and anyone whose lookup failed (fail secure: an outage of users.info admits
nobody). Then the first rule that matches admits: `workspace_members` (full members:
guests are not), `user_group` (a group's handle), `user_id`. Lookups are cached for
cache_ttl seconds, refusals included, so a burst of messages costs one lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airut_core.config import SlackRule

logger = logging.getLogger("airut.slack")
FAILED_TTL = 10.0  # a failed lookup is tried again this soon


@dataclass
class Verdict:
    admitted: bool
    reason: str  # what the log says
    name: str = ""  # the user's display name, for the task's sender


class Authorizer:
    def __init__(self, call: Callable[..., dict], rules: list[SlackRule], team_id: str,
                 ttl: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.call = call  # call(method, **args) -> the response's data; raises on errors
        self.rules = rules
        self.team_id = team_id
        self.ttl = ttl
        self.clock = clock
        self._users: dict[str, tuple[float, dict | Exception]] = {}
        self._groups: tuple[float, dict[str, set[str]] | Exception] | None = None
        self._lock = threading.Lock()

    def check(self, user_id: str, event_team: str | None = None) -> Verdict:
        if event_team and event_team != self.team_id:
            return Verdict(False, f"user {user_id} is of another workspace ({event_team})")
        user = self.user(user_id)
        if isinstance(user, Exception):
            return Verdict(False, f"user {user_id} could not be looked up ({user}): refused")
        name = display_name(user) or user_id
        if user.get("is_bot") is not False or user.get("is_app_user") is True:
            return Verdict(False, f"user {user_id} is a bot or an app", name)
        if user.get("deleted") is not False:
            return Verdict(False, f"user {user_id} is deactivated", name)
        if user.get("team_id") != self.team_id:
            return Verdict(False, f"user {user_id} is of another workspace "
                                  f"({str(user.get('team_id'))[:30]})", name)
        for i, rule in enumerate(self.rules):
            why = self._matches(rule, user_id, user)
            if isinstance(why, Exception):
                return Verdict(False, f"user {user_id}: rule {i + 1} could not be checked "
                                      f"({why}): refused", name)
            if why:
                return Verdict(True, f"user {user_id} admitted by rule {i + 1} ({why})", name)
        return Verdict(False, f"user {user_id} matches no rule of slack.authorized", name)

    def _matches(self, rule: SlackRule, user_id: str, user: dict) -> str | Exception | None:
        if rule.user_id is not None:
            return "user_id" if rule.user_id == user_id else None
        if rule.workspace_members:
            guest = user.get("is_restricted") is not False or \
                user.get("is_ultra_restricted") is True
            return None if guest else "workspace member"
        if rule.user_group is not None:
            groups = self.groups()
            if isinstance(groups, Exception):
                return groups
            handle = rule.user_group.lstrip("@")
            return f"user group @{handle}" if user_id in groups.get(handle, ()) else None
        return None

    def user(self, user_id: str) -> dict | Exception:
        with self._lock:
            cached = self._users.get(user_id)
        if cached and cached[0] > self.clock():
            return cached[1]
        try:
            found: dict | Exception = _mapping(self.call("users.info", user=user_id)
                                              .get("user"))
        except Exception as e:
            logger.warning("users.info for %s failed: %s", user_id, e)
            found = e
        ttl = FAILED_TTL if isinstance(found, Exception) else self.ttl
        with self._lock:
            self._users[user_id] = (self.clock() + ttl, found)
        return found

    def groups(self) -> dict[str, set[str]] | Exception:
        """Each user group's handle and members."""
        with self._lock:
            cached = self._groups
        if cached and cached[0] > self.clock():
            return cached[1]
        try:
            listing = self.call("usergroups.list", include_users=True).get("usergroups")
            found: dict[str, set[str]] | Exception = {
                g["handle"]: {u for u in g.get("users") or [] if isinstance(u, str)}
                for g in listing if isinstance(g, dict) and isinstance(g.get("handle"), str)
                and not g.get("date_delete")}
        except Exception as e:
            logger.warning("usergroups.list failed: %s", e)
            found = e
        ttl = FAILED_TTL if isinstance(found, Exception) else self.ttl
        with self._lock:
            self._groups = (self.clock() + ttl, found)
        return found


def display_name(user: dict) -> str:
    profile = user.get("profile") if isinstance(user.get("profile"), dict) else {}
    for value in (profile.get("display_name"), profile.get("real_name"), user.get("name")):
        if isinstance(value, str) and value.strip():
            return value.strip()[:80]
    return ""


def _mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("the answer has no user")
    return value
