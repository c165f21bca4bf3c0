"""Reading Claude Code's stream-json output: session, reply text, usage.

The reply text is chosen as airut chooses it: if the run produced several
`result` events (late background work), their texts joined; else the last
assistant text, extended back to an "anchor" among the previous four texts that
is at least four times longer (catches "real answer, tool call, short coda");
else the final result text.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NO_OUTPUT = "No output received from Claude."
ANCHOR_WINDOW = 4
ANCHOR_RATIO = 4
TAIL_LINES = 10


@dataclass
class RunSummary:
    session_id: str | None = None
    texts: list[str] = field(default_factory=list)  # assistant text events, in order
    results: list[dict[str, Any]] = field(default_factory=list)
    other_lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def result(self) -> dict[str, Any]:
        return self.results[-1] if self.results else {}

    @property
    def is_error(self) -> bool:
        return bool(self.result.get("is_error"))

    @property
    def result_text(self) -> str:
        return self.result.get("result") or ""

    @property
    def api_error_status(self) -> int | None:
        status = self.result.get("api_error_status")
        return status if isinstance(status, int) else None

    @property
    def terminal_reason(self) -> str:
        return self.result.get("terminal_reason") or ""

    @property
    def session_not_found(self) -> bool:
        errors = self.result.get("errors") or []
        return any("No conversation found with session ID" in str(e) for e in errors)

    def reply_text(self) -> str:
        result_texts = [r.get("result") or "" for r in self.results]
        if len(self.results) > 1 and any(result_texts):
            return "\n\n".join(t for t in result_texts if t)
        if self.texts:
            last = len(self.texts) - 1
            start = last
            for i in range(max(0, last - ANCHOR_WINDOW), last):
                if len(self.texts[i]) >= ANCHOR_RATIO * len(self.texts[last]):
                    start = i
                    break
            return "\n\n".join(self.texts[start:])
        return (result_texts[-1] if result_texts else "") or NO_OUTPUT

    def error_tail(self) -> str:
        """The last lines worth showing when the run failed."""
        lines = [t for t in self.result_text.splitlines() if t.strip()]
        if not lines:
            lines = [str(e) for e in self.result.get("errors") or []]
        if not lines and self.texts:
            lines = self.texts[-1].splitlines()
        lines = lines or list(self.other_lines)
        return "\n".join(lines[-TAIL_LINES:])

    def usage(self) -> dict[str, Any]:
        r = self.result
        usage = r.get("usage") or {}
        return {k: v for k, v in {
            "cost_usd": r.get("total_cost_usd"),
            "turns": r.get("num_turns"),
            "duration_ms": r.get("duration_ms"),
            "input_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"),
        }.items() if v is not None}


def parse(lines: Iterable[bytes | str]) -> RunSummary:
    summary = RunSummary()
    for raw in lines:
        line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            summary.other_lines.append(line)  # podman or runtime messages, not the agent
            continue
        if not isinstance(event, dict):
            continue
        summary.session_id = event.get("session_id") or summary.session_id
        kind = event.get("type")
        if kind == "assistant":
            text = _assistant_text(event)
            if text:
                summary.texts.append(text)
        elif kind == "result":
            summary.results.append(event)
    return summary


def _assistant_text(event: dict) -> str:
    content = (event.get("message") or {}).get("content") or []
    return "".join(b.get("text", "") for b in content
                   if isinstance(b, dict) and b.get("type") == "text").strip()
