"""Scripted conversations for the offline demo model.

A scenario is a list of turns the "model" plays after each user prompt:
  {"tool": "Bash", "input": {"command": "ls"}}   a tool_use turn
  {"text": "Done. {tool_result}"}                 a text turn (ends the agent's run)
or an error the API returns instead:
  {"error": {"status": 429, "type": "rate_limit_error", "message": "..."}}
and optionally {"stall_seconds": N}: the stream stops after message_start for N s;
{"error_only_when_resumed": true}: the error only for a request carrying earlier
prompts (a resumed session); a fresh session plays the turns.

The turn to play is derived from the request alone (stateless, so it also works
for resumed sessions): the number of assistant messages since the latest user
prompt that is not a tool result. A prompt chooses its scenario with the marker
[[scenario:NAME]]; without one the "demo" scenario plays.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MARKER = re.compile(r"\[\[scenario:([A-Za-z0-9_.-]+)\]\]")

BUILTIN: dict[str, dict[str, Any]] = {
    "demo": {
        "turns": [
            {"tool": "Bash", "input": {"command": "git log --oneline -3 && ls",
                                       "description": "Look at the repository"}},
            {"tool": "Bash", "input": {
                "command": "printf '# Notes\\n\\nThe offline demo model was here.\\n' > NOTES.md"
                           " && git status --short",
                "description": "Write NOTES.md"}},
            {"text": "I looked at the repository and wrote `NOTES.md`.\n\n"
                     "What `git status` shows now:\n\n```\n{tool_result}\n```\n\n"
                     "(This answer comes from airut's offline demo model; with a real "
                     "Anthropic API key in airut.yaml, a real agent answers. See "
                     "doc/configuration.md.)"},
        ]
    },
    "echo": {"turns": [{"text": "You said: {prompt}"}]},
    # The API's failure modes, for trying out how airut reports them.
    "error-401": {"error": {"status": 401, "type": "authentication_error",
                            "message": "invalid x-api-key"}},
    "error-429": {"error": {"status": 429, "type": "rate_limit_error",
                            "message": "Number of requests has exceeded your rate limit"}},
    "error-529": {"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded"}},
    "stall": {"stall_seconds": 600, "turns": [{"text": "Sorry, that took a while."}]},
}


def load(directory: Path | None, name: str) -> dict[str, Any]:
    """Scenario NAME from the directory (NAME.json), else built in, else 'demo'."""
    if directory:
        path = directory / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
    return BUILTIN.get(name) or BUILTIN["demo"]


def _blocks(message: dict) -> list[dict]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _is_prompt(message: dict) -> bool:
    return message.get("role") == "user" and not any(
        b.get("type") == "tool_result" for b in _blocks(message))


def _text(block_or_content: Any) -> str:
    if isinstance(block_or_content, str):
        return block_or_content
    if isinstance(block_or_content, list):
        return "\n".join(_text(b) for b in block_or_content)
    if isinstance(block_or_content, dict):
        if block_or_content.get("type") == "tool_result":
            return _text(block_or_content.get("content", ""))
        return str(block_or_content.get("text", ""))
    return ""


class Position:
    """Where a request stands in its conversation."""

    def __init__(self, messages: list[dict]):
        prompts = [i for i, m in enumerate(messages) if _is_prompt(m)]
        self.resumed = len(prompts) > 1
        start = prompts[-1] if prompts else 0
        self.prompt = "\n".join(_text(b) for b in _blocks(messages[start])) if messages else ""
        self.turn = sum(1 for m in messages[start + 1:] if m.get("role") == "assistant")
        results = [b for m in messages[start + 1:] for b in _blocks(m)
                   if b.get("type") == "tool_result"]
        self.last_tool_result = _text(results[-1]).strip() if results else ""

    def scenario_name(self) -> str:
        found = MARKER.findall(self.prompt)
        return found[-1] if found else "demo"

    def user_text(self) -> str:
        """The prompt without the marker and without system reminders the CLI adds."""
        text = re.sub(r"<system-reminder>.*?</system-reminder>", "", self.prompt, flags=re.S)
        return MARKER.sub("", text).strip()


def next_turn(scenario: dict[str, Any], position: Position) -> dict[str, Any]:
    turns = scenario.get("turns") or [{"text": "(empty scenario)"}]
    if position.turn >= len(turns):  # the CLI asked again after the script ended
        return {"text": "(The scripted conversation has ended.)"}
    turn = dict(turns[position.turn])
    if "text" in turn:
        turn["text"] = (turn["text"].replace("{tool_result}", position.last_tool_result[:20000])
                        .replace("{prompt}", position.user_text()[:2000]))
    return turn
