"""The agent's actions, from its stream-json output in events.jsonl (the dashboard
shows them; the Slack channel posts the plan).

The output is **hostile**: the agent writes it, and can write anything into it. Every
field is taken only with the right type, every text is cut (the page folds long ones),
lines over LINE_MAX are skipped and noted, and at most ITEMS_MAX items are kept (the
newest). Parsing is incremental: a running task's page asks again every few seconds,
and only the bytes added since are read (Reader caches per file and start offset).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LINE_MAX = 1 << 20  # one event; longer lines are skipped
READ_MAX = 32 << 20  # of one task's output, from its end
ITEMS_MAX = 1500
TEXT_MAX = 6000  # characters of an assistant text
INPUT_MAX = 3000  # of a tool call's input, as JSON
RESULT_MAX = 3000  # of a tool result
CACHE_ENTRIES = 32


@dataclass
class Item:
    kind: str  # init, text, thinking, tool, retry, result, output, note
    text: str = ""
    name: str = ""  # the tool
    tool_id: str = ""
    detail: str = ""  # a tool's input; a retry's reason
    result: str | None = None  # a tool's result, once it came
    is_error: bool = False
    time: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # a result's numbers


@dataclass
class Timeline:
    items: deque[Item] = field(default_factory=lambda: deque(maxlen=ITEMS_MAX))
    dropped: int = 0  # items older than the kept ones
    skipped_bytes: int = 0  # output before READ_MAX from the end, and overlong lines
    todos: list[dict[str, str]] = field(default_factory=list)  # the latest TodoWrite
    tools: dict[str, Item] = field(default_factory=dict)  # open tool calls by id
    position: int = 0  # the next byte to read
    inode: tuple[int, int] = (0, 0)

    def add(self, item: Item) -> None:
        if len(self.items) == self.items.maxlen:
            self.dropped += 1
            old = self.items[0]
            if old.tool_id:
                self.tools.pop(old.tool_id, None)
        self.items.append(item)


class Reader:
    """Timelines by (file, start): the bytes added since the last read are parsed."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, int], Timeline] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: Path, start: int = 0, end: int | None = None) -> Timeline:
        key = (str(path), start)
        with self._lock:
            timeline = self._cache.pop(key, None)
        try:
            timeline = self._extend(path, start, end, timeline)
        except FileNotFoundError:
            timeline = Timeline()
        with self._lock:
            self._cache[key] = timeline
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return timeline

    def _extend(self, path: Path, start: int, end: int | None,
                timeline: Timeline | None) -> Timeline:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            size = st.st_size if end is None else min(end, st.st_size)
            inode = (st.st_dev, st.st_ino)
            if timeline is None or timeline.inode != inode or timeline.position > size:
                timeline = Timeline(inode=inode, position=start)
                if size - start > READ_MAX:
                    timeline.skipped_bytes = size - READ_MAX - start
                    timeline.position = size - READ_MAX
                    f.seek(timeline.position)
                    timeline.position += len(f.readline(LINE_MAX))  # a cut line
            f.seek(timeline.position)
            while timeline.position < size:
                line = f.readline(min(LINE_MAX + 1, size - timeline.position))
                if len(line) > LINE_MAX:  # skipped to its end, never held whole
                    skipped = len(line)
                    while not line.endswith(b"\n") and timeline.position + skipped < size:
                        line = f.readline(min(LINE_MAX, size - timeline.position - skipped))
                        skipped += len(line)
                    timeline.position += skipped
                    timeline.skipped_bytes += skipped
                    timeline.add(Item("note", f"an output line of {skipped} bytes was skipped"))
                    continue
                if not line.endswith(b"\n") and end is None:
                    break  # still being written: read it whole next time
                timeline.position += len(line)
                take(timeline, line)
        return timeline


def take(timeline: Timeline, raw: bytes) -> None:
    text = raw.decode(errors="replace").strip()
    if not text:
        return
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        timeline.add(Item("output", _cut(text, RESULT_MAX)))  # podman or runtime messages
        return
    if not isinstance(event, dict):
        return
    kind = event.get("type")
    stamp = _str(event.get("timestamp"))[:40]
    if kind == "system" and event.get("subtype") == "init":
        tools = event.get("tools")
        timeline.add(Item("init", _str(event.get("model"))[:100], time=stamp, facts={
            "tools": len(tools) if isinstance(tools, list) else 0}))
    elif kind == "system" and event.get("subtype") == "api_retry":
        timeline.add(Item("retry", time=stamp, detail=(
            f"attempt {_num(event.get('attempt'))} of {_num(event.get('max_retries'))}: "
            f"{_str(event.get('error'))[:100]} {_num(event.get('error_status'))}")))
    elif kind == "assistant":
        for block in _content(event):
            _assistant_block(timeline, block, stamp)
    elif kind == "user":
        for block in _content(event):
            if block.get("type") == "tool_result":
                call = timeline.tools.pop(_str(block.get("tool_use_id")), None)
                result = _cut(_result_text(block.get("content")), RESULT_MAX)
                if call is not None:
                    call.result, call.is_error = result, block.get("is_error") is True
    elif kind == "result":
        usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
        timeline.add(Item("result", _cut(_str(event.get("result")), TEXT_MAX),
                          is_error=event.get("is_error") is True, time=stamp, facts={
            "turns": _num(event.get("num_turns")),
            "cost_usd": _num(event.get("total_cost_usd")),
            "duration_ms": _num(event.get("duration_ms")),
            "input_tokens": _num(usage.get("input_tokens")),
            "output_tokens": _num(usage.get("output_tokens")),
            "cache_read_tokens": _num(usage.get("cache_read_input_tokens")),
        }))


def _assistant_block(timeline: Timeline, block: dict, stamp: str) -> None:
    kind = block.get("type")
    if kind == "text" and _str(block.get("text")).strip():
        timeline.add(Item("text", _cut(_str(block["text"]).strip(), TEXT_MAX), time=stamp))
    elif kind == "thinking" and _str(block.get("thinking")).strip():
        timeline.add(Item("thinking", _cut(_str(block["thinking"]).strip(), TEXT_MAX),
                          time=stamp))
    elif kind == "tool_use":
        name = _str(block.get("name"))[:100] or "?"
        tool_input = block.get("input")
        try:
            shown = json.dumps(tool_input, indent=1, ensure_ascii=False)
        except (ValueError, TypeError, RecursionError):
            shown = ""
        item = Item("tool", name=name, tool_id=_str(block.get("id"))[:100],
                    detail=_cut(_summary(name, tool_input) or shown, INPUT_MAX), time=stamp)
        item.facts["input"] = _cut(shown, INPUT_MAX)
        if name == "TodoWrite" and isinstance(tool_input, dict):
            timeline.todos = _todos(tool_input.get("todos"))
        timeline.add(item)
        if item.tool_id:
            timeline.tools[item.tool_id] = item


def _summary(name: str, tool_input: Any) -> str:
    """The one field people read first: Bash's command, a file's path, a search."""
    if not isinstance(tool_input, dict):
        return ""
    for key in ("command", "file_path", "path", "pattern", "url", "query", "description"):
        if isinstance(tool_input.get(key), str):
            return tool_input[key]
    return ""


def _todos(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        return []
    return [{"content": _cut(_str(t.get("content")), 300),
             "status": _str(t.get("status"))[:20]}
            for t in value[:100] if isinstance(t, dict)]


def _content(event: dict) -> list[dict]:
    message = event.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content if isinstance(b, dict)
                         and isinstance(b.get("text"), str))
    return ""


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _num(value: Any) -> int | float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e15:
        return value
    return None


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… [{len(text) - limit} more characters]"
