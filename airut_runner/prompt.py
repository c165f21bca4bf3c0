"""The text the agent receives on stdin: channel context, then the message(s).

Messages merged into one task each keep their header, in order.

Each message carries its sender and time ("[alice@example.com 2026-11-26
18:55:01 UTC]"), so merged follow-ups keep their attribution.
"""

from __future__ import annotations

from datetime import datetime

from airut_core.records import TaskRecord

CONTEXT = (
    "You are an agent working on a git repository checked out in /workspace. The "
    "message below reached you through {channel}; your final answer is sent back the "
    "same way, so write it for the person who asked. Only /workspace, /inbox and "
    "/storage persist between messages of this conversation; /storage is yours for "
    "anything worth keeping outside the repository. To send files with your answer, "
    "put them in the root of /outbox. Markdown is fine. Interactive tools "
    "(AskUserQuestion, plan mode) do not work here: decide, and say what you decided."
)
CHANNELS = {"local": "the airut command line", "email": "email", "slack": "Slack"}


RECOVERY = (
    "Note: the earlier session of this conversation could not be continued, so you start "
    "a fresh one; the workspace still holds the earlier work. {previous}"
)


def compose(tasks: list[TaskRecord], inbox_files: list[str],
            recovery: str | None = None) -> str:
    """The prompt; recovery (the last reply, possibly "") marks a fresh-session retry."""
    first = tasks[0]
    channel = CHANNELS.get(first.channel.split("-")[0], first.channel)
    parts = [CONTEXT.format(channel=channel)]
    if inbox_files:
        parts[0] += (" The user attached files, saved in /inbox/: "
                     f"{', '.join(sorted(inbox_files))}.")
    if recovery is not None:
        previous = (f"Your last reply in it was:\n\n<previous-reply>\n{recovery}\n"
                    "</previous-reply>" if recovery else "There is no earlier reply to go on.")
        parts.append(RECOVERY.format(previous=previous))
    for task in tasks:
        parts.append(f"[{task.sender} {_when(task.created)}]\n{task.text}")
    return "\n\n".join(parts) + "\n"


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso
