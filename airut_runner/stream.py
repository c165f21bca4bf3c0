"""Reading Claude Code's stream-json output: session, reply text, usage.

The stream is **hostile input**: the agent runs as root in its container and can write
any line into its own standard output (`/proc/1/fd/1`), so every field is checked by
type and pattern before it is used, and a field that fails is ignored as if absent.
What is parsed is bounded too: at most PARSE_MAX bytes from the end of a run's output,
lines over LINE_MAX skipped, a few texts and results kept, the reply cut at REPLY_MAX.

The reply text is chosen as airut chooses it: if the run produced several `result`
events (late background work), their texts joined; else the last assistant text,
extended back to an "anchor" among the previous four texts that is at least four
times longer (catches "real answer, tool call, short coda"); else the final result
text.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from airut_core.conversation import SESSION_ID
from airut_core.schema import count as _count

NO_OUTPUT = "No output received from Claude."
ANCHOR_WINDOW = 4
ANCHOR_RATIO = 4
TAIL_LINES = 10
LINE_MAX = 8 << 20  # one event; longer lines are skipped (noted in the error tail)
PARSE_MAX = 64 << 20  # of one run's output, read from its end
RESULTS_MAX = 20
REPLY_MAX = 100_000  # characters of reply text
TEXT_MAX = 20_000  # characters of one result text or error kept for the reply
SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Result:
    """A `result` event, reduced to checked fields."""

    text: str = ""
    is_error: bool = False
    api_error_status: int | None = None
    terminal_reason: str = ""
    errors: list[str] = field(default_factory=list)
    cost_usd: float | None = None
    turns: int | None = None
    duration_ms: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @classmethod
    def from_event(cls, event: dict) -> Result:
        usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
        errors = event.get("errors") if isinstance(event.get("errors"), list) else []
        reason = _str(event.get("terminal_reason"))
        return cls(
            text=_str(event.get("result"))[:TEXT_MAX],
            is_error=event.get("is_error") is True,
            api_error_status=_count(event.get("api_error_status"), 999),
            terminal_reason=reason if re.fullmatch(r"[a-z_]{1,64}", reason) else "",
            errors=[clean(e[:TEXT_MAX]) for e in errors[:TAIL_LINES] if isinstance(e, str)],
            cost_usd=_money(event.get("total_cost_usd")),
            turns=_count(event.get("num_turns")),
            duration_ms=_count(event.get("duration_ms")),
            input_tokens=_count(usage.get("input_tokens")),
            output_tokens=_count(usage.get("output_tokens")),
        )


@dataclass
class RunSummary:
    session_id: str | None = None
    texts: deque[str] = field(default_factory=lambda: deque(maxlen=ANCHOR_WINDOW + 1))
    results: deque[Result] = field(default_factory=lambda: deque(maxlen=RESULTS_MAX))
    other_lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def result(self) -> Result:
        return self.results[-1] if self.results else Result()

    @property
    def is_error(self) -> bool:
        return self.result.is_error

    @property
    def result_text(self) -> str:
        return self.result.text

    @property
    def api_error_status(self) -> int | None:
        return self.result.api_error_status

    @property
    def terminal_reason(self) -> str:
        return self.result.terminal_reason

    @property
    def session_not_found(self) -> bool:
        return any("No conversation found with session ID" in e for e in self.result.errors)

    def reply_text(self) -> str:
        result_texts = [r.text for r in self.results]
        if len(self.results) > 1 and any(result_texts):
            text = "\n\n".join(t for t in result_texts if t)
        elif self.texts:
            texts = list(self.texts)
            last = len(texts) - 1
            start = last
            for i in range(max(0, last - ANCHOR_WINDOW), last):
                if len(texts[i]) >= ANCHOR_RATIO * len(texts[last]):
                    start = i
                    break
            text = "\n\n".join(texts[start:])
        else:
            text = (result_texts[-1] if result_texts else "") or NO_OUTPUT
        if len(text) > REPLY_MAX:
            text = text[:REPLY_MAX] + f"\n\n[airut: the answer was cut at {REPLY_MAX} characters]"
        return text

    def error_tail(self) -> str:
        """The last lines worth showing when the run failed."""
        lines = [t for t in self.result_text.splitlines() if t.strip()]
        if not lines:
            lines = list(self.result.errors)
        if not lines and self.texts:
            lines = self.texts[-1].splitlines()
        lines = lines or list(self.other_lines)
        return "\n".join(line[:500] for line in lines[-TAIL_LINES:])

    def usage(self) -> dict[str, int | float]:
        r = self.result
        return {k: v for k, v in {
            "cost_usd": r.cost_usd, "turns": r.turns, "duration_ms": r.duration_ms,
            "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
        }.items() if v is not None}


def parse(lines: Iterable[bytes | str]) -> RunSummary:
    summary = RunSummary()
    for raw in lines:
        if len(raw) > LINE_MAX:
            summary.other_lines.append(f"[airut: skipped an output line of {len(raw)} bytes]")
            continue
        line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or a 5,000-digit number
            summary.other_lines.append(clean(line[:1000]))  # podman or runtime messages
            continue
        if isinstance(event, dict):
            _take(summary, event)
    return summary


def read(path: Path, offset: int) -> RunSummary:
    """The summary of one run: its output starts at `offset` in the conversation's
    events.jsonl. Reads at most PARSE_MAX bytes, from the end."""
    try:
        with path.open("rb") as f:
            return parse(_lines(f, offset))
    except FileNotFoundError:
        return RunSummary()


def _lines(f: BinaryIO, offset: int) -> Iterable[bytes]:
    size = f.seek(0, 2)
    start = max(offset, size - PARSE_MAX)
    f.seek(start)
    if start > offset:
        f.readline(LINE_MAX + 1)  # the rest of a line cut by the start
    while True:
        line = f.readline(LINE_MAX + 1)
        if not line:
            return
        rest = line
        while len(rest) > LINE_MAX and not rest.endswith(b"\n"):
            rest = f.readline(LINE_MAX + 1)  # the rest of an overlong line: not read into memory
        yield line  # an overlong one is counted as skipped by parse()


def _take(summary: RunSummary, event: dict) -> None:
    session = event.get("session_id")
    if isinstance(session, str) and SESSION_ID.match(session):
        summary.session_id = session
    kind = event.get("type")
    if kind == "assistant":
        text = _assistant_text(event)
        if text:
            summary.texts.append(text)
    elif kind == "result":
        summary.results.append(Result.from_event(event))


def _assistant_text(event: dict) -> str:
    message = event.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return ""
    return clean("".join(b["text"] for b in content if isinstance(b, dict)
                         and b.get("type") == "text" and isinstance(b.get("text"), str))).strip()


def _str(value: Any) -> str:
    return clean(value) if isinstance(value, str) else ""


def clean(text: str) -> str:
    """Valid Unicode: JSON may carry lone surrogates (\\ud800), which no file, record,
    mail or terminal can encode; each becomes U+FFFD."""
    return SURROGATE.sub("\ufffd", text)


def _money(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        amount = float(value)
        if math.isfinite(amount) and 0 <= amount < 1e9:
            return amount
    return None
