"""How a task ended, and what the reply says about it.

Inputs: the finished/ marker the task unit wrote (systemd's SERVICE_RESULT,
EXIT_CODE, EXIT_STATUS, and the cgroup's OOM counters), whether a stop was
requested, and the agent's stream-json (its final `result` event names API
errors: `api_error_status`, `terminal_reason`). Under cgroup v2 systemd reports
`oom-kill` itself; under v1 a kill by SIGKILL while the cgroup hit its memory
limit is the sign.

Two results are not outcomes but requests to the runner: PROMPT_TOO_LONG and
SESSION_LOST mean "run once more in a fresh session with a recovery prompt".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airut_core.config import ResourceLimits
from airut_runner.stream import RunSummary

KILLED = {"137", "9", "KILL"}
PROMPT_TOO_LONG = "prompt_too_long"
SESSION_LOST = "session_lost"
RETRY_FRESH = (PROMPT_TOO_LONG, SESSION_LOST)


@dataclass
class Exit:
    service_result: str = ""
    exit_code: str = ""
    exit_status: str = ""
    oom_kills: int = 0
    memory_limit_hits: int = 0

    @classmethod
    def from_marker(cls, marker: dict) -> Exit:
        """From a finished/ marker; a field of the wrong type counts as absent."""
        values = {}
        for name in cls.__dataclass_fields__:
            default = getattr(cls, name)
            value = marker.get(name, default)
            values[name] = value if type(value) is type(default) else default
        return cls(**values)

    @property
    def oom_killed(self) -> bool:
        """The kernel or systemd said so (cgroup v2; v1's oom_kill counter)."""
        return self.service_result == "oom-kill" or self.oom_kills > 0

    @property
    def out_of_memory(self) -> bool:
        """Also v1's inference: killed by SIGKILL while the cgroup was at its limit."""
        return self.oom_killed or (self.exit_status in KILLED and self.memory_limit_hits > 0)


def classify(exit: Exit, stop_requested: bool, summary: RunSummary | None = None,
             resumed: bool = False, over_disk: bool = False) -> str:
    summary = summary or RunSummary()
    if stop_requested:
        return "stopped"
    if over_disk:
        return "disk_limit"
    if exit.oom_killed:
        return "out_of_memory"
    # Before v1's inference: a timeout ends in SIGKILL after the stop grace, and the
    # limit counter also rises with ordinary page-cache reclaim.
    if exit.service_result == "timeout":
        return "timeout"
    if exit.out_of_memory:
        return "out_of_memory"
    status = summary.api_error_status
    if status in (401, 403):
        return "auth_failed"
    if status == 429:
        return "rate_limited"
    if status in (503, 529):
        return "overloaded"
    if summary.terminal_reason == "prompt_too_long" or summary.result_text.startswith(
            "Prompt is too long"):
        return PROMPT_TOO_LONG
    if resumed and (summary.session_not_found or _transcript_rejected(summary)):
        return SESSION_LOST
    if exit.service_result == "success" and not summary.is_error:
        return "success"
    return "failed"


def _transcript_rejected(summary: RunSummary) -> bool:
    """The API refused the session's own history (a 400 about `messages`: tool_use without
    tool_result, altered thinking blocks...): only a fresh session can go on. Other 4xx
    (a bad model name, billing, a request too large for other reasons) say nothing about
    the session, which is kept."""
    if summary.api_error_status != 400:
        return False
    detail = " ".join([summary.result_text, *summary.result.errors])
    return bool(re.search(r"\bmessages(\.\d+)?[.:]|tool_use|tool_result|thinking", detail))


def reply_text(outcome: str, summary: RunSummary, limits: ResourceLimits, repo: str = "",
               note: str = "", disk: dict | None = None) -> str:
    body = _body(outcome, summary, limits, repo, disk or {})
    return f"{note}\n\n{body}" if note else body


def _body(outcome: str, summary: RunSummary, limits: ResourceLimits, repo: str,
          disk: dict) -> str:
    detail = summary.result_text.strip()
    if outcome == "disk_limit":
        used = disk.get("used") if isinstance(disk.get("used"), int) else 0
        why = (f"its files could not be measured ({disk['unmeasurable']}) against its disk "
               f"limit of {format_bytes(limits.disk)}" if isinstance(disk.get("unmeasurable"),
                                                                    str)
               else f"this conversation's files grew to {format_bytes(used)}, over its disk "
                    f"limit of {format_bytes(limits.disk)}")
        return (f"The task was stopped: {why}. "
                "Work done so far is kept: reply asking the agent to make room (build "
                "outputs, caches, downloads), or ask the operator to raise "
                f"repos.{repo or '<repository>'}.resource_limits.disk.")
    if outcome == "success":
        return f"{summary.reply_text()}\n\n{usage_footer(summary)}".rstrip()
    if outcome == "out_of_memory":
        return (f"The agent ran out of memory (the limit is {format_bytes(limits.memory)}) and "
                "was stopped. Work done so far is kept in the workspace: reply to continue, "
                "perhaps asking for a lighter approach, or ask the operator to raise "
                f"repos.{repo or '<repository>'}.resource_limits.memory.")
    if outcome == "timeout":
        return (f"The task was stopped after {format_seconds(limits.timeout)}, its time limit. "
                "Work done so far is kept in the workspace: reply to resume.")
    if outcome == "stopped":
        return "The task was stopped on request. Work done so far is kept: reply to continue."
    if outcome == "auth_failed":
        return ("The model credentials were rejected, so your message was not processed. "
                "The operator needs to fix the API key of this repository "
                f"(repos.{repo or '<repository>'}.masked_secrets, or .secrets when the network "
                "sandbox is off); then send your message again."
                + _quoted(detail))
    if outcome in ("rate_limited", "overloaded"):
        what = ("is rate-limiting this account" if outcome == "rate_limited"
                else "is overloaded right now")
        return (f"The model API {what}, so the agent stopped. Nothing was lost: the "
                "conversation keeps its context and its workspace. Reply in a few minutes "
                "(\"continue\" is enough) to carry on." + _quoted(detail))
    if outcome == PROMPT_TOO_LONG:
        return ("Your message is too long for the model's context window, even in a fresh "
                "session. Send a shorter message, or put large material in a file in the "
                "repository and refer to it." + _quoted(detail))
    tail = summary.error_tail()
    text = ("An error occurred while processing your message. To retry, send your "
            "message again.")
    return f"{text}\n\nClaude output:\n```\n{tail}\n```" if tail else text


def _quoted(detail: str) -> str:
    return f"\n\nThe API said: {detail}" if detail else ""


CONTEXT_RESET_NOTE = {
    PROMPT_TOO_LONG: "(The conversation had grown too long for the model's context, so "
                     "this answer comes from a fresh session that was given your last reply "
                     "as context. Earlier details may need repeating.)",
    SESSION_LOST: "(The agent's previous session could not be resumed, so this answer comes "
                  "from a fresh session that was given your last reply as context. Earlier "
                  "details may need repeating.)",
}


def usage_footer(summary: RunSummary) -> str:
    usage = summary.usage()
    parts = []
    if "cost_usd" in usage:
        parts.append(f"Cost: ${usage['cost_usd']:.4f}")
    if "turns" in usage:
        parts.append(f"{usage['turns']} turn{'s' if usage['turns'] != 1 else ''}")
    if "duration_ms" in usage:
        parts.append(f"{usage['duration_ms'] / 1000:.1f} s")
    return f"*{' · '.join(parts)}*" if parts else ""


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def format_seconds(s: int) -> str:
    if s % 3600 == 0:
        return f"{s // 3600} h"
    if s % 60 == 0:
        return f"{s // 60} min"
    return f"{s} s"
