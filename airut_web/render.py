"""Formatting for the templates. Templates escape whatever they print with {{ }};
the few helpers here that return markup ({{! }}) escape every value they put in it."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

OUTCOME_CLASS = {"success": "ok", "queued": "wait", "preparing": "wait", "building": "wait",
                 "running": "run", "stopping": "run", "stopped": "muted"}


def when(stamp: str | None) -> str:
    """<time>: UTC as written, turned into the viewer's local time by app.js."""
    if not stamp:
        return "-"
    try:
        moment = datetime.fromisoformat(stamp).astimezone(UTC)
    except ValueError:
        return escape(stamp[:40])
    iso = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    shown = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{escape(iso)}">{escape(shown)} UTC</time>'


def epoch(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return when(datetime.fromtimestamp(seconds, UTC).isoformat())


def badge(outcome: str) -> str:
    cls = OUTCOME_CLASS.get(outcome, "bad")
    return f'<span class="badge {cls}">{escape(outcome.replace("_", " "))}</span>'


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def age(stamp: str | None) -> str:
    """How long ago: counted by app.js in the viewer's browser (the page itself stays the
    same from one second to the next, so a live refresh gets 304 when nothing changed)."""
    if not stamp:
        return ""
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return ""
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    iso = then.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f'<span class="age" data-since="{escape(iso)}"></span>'


def money(amount: float | None) -> str:
    return "-" if amount is None else f"${amount:.4f}" if amount < 1 else f"${amount:.2f}"


def size(value: float | int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def number(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:g}"


def short(text: str | None, limit: int = 120) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
