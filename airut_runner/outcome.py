"""How a task ended, and what the reply says about it.

Inputs: the finished/ marker the task unit wrote (systemd's SERVICE_RESULT,
EXIT_CODE, EXIT_STATUS, and the cgroup's OOM counters), whether a stop was
requested, and the parsed stream-json. Under cgroup v2 systemd reports
`oom-kill` itself; under v1 (the test lab) a kill by SIGKILL while the cgroup
hit its memory limit is the sign.
"""

from __future__ import annotations

from dataclasses import dataclass

from airut_core.config import ResourceLimits
from airut_runner.stream import RunSummary

KILLED = {"137", "9", "KILL"}


@dataclass
class Exit:
    service_result: str = ""
    exit_code: str = ""
    exit_status: str = ""
    oom_kills: int = 0
    memory_limit_hits: int = 0

    @classmethod
    def from_marker(cls, marker: dict) -> Exit:
        return cls(**{k: marker.get(k, getattr(cls, k)) for k in cls.__dataclass_fields__})

    @property
    def out_of_memory(self) -> bool:
        if self.service_result == "oom-kill" or self.oom_kills > 0:
            return True
        return self.exit_status in KILLED and self.memory_limit_hits > 0


def classify(exit: Exit, stop_requested: bool) -> str:
    if stop_requested:
        return "stopped"
    if exit.out_of_memory:
        return "out_of_memory"
    if exit.service_result == "timeout":
        return "timeout"
    if exit.service_result == "success":
        return "success"
    return "failed"


def reply_text(outcome: str, summary: RunSummary, limits: ResourceLimits) -> str:
    if outcome == "success":
        return f"{summary.reply_text()}\n\n{usage_footer(summary)}".rstrip()
    if outcome == "out_of_memory":
        return (f"The agent ran out of memory (the limit is {format_bytes(limits.memory)}) and "
                "was stopped. Work done so far is kept in the workspace: reply to continue, "
                "perhaps asking for a lighter approach, or ask the operator to raise "
                "resource_limits.memory for this repository.")
    if outcome == "timeout":
        return (f"The task was stopped after {format_seconds(limits.timeout)}, its time limit. "
                "Work done so far is kept in the workspace: reply to resume.")
    if outcome == "stopped":
        return "The task was stopped on request. Work done so far is kept: reply to continue."
    tail = summary.error_tail()
    text = ("An error occurred while processing your message. To retry, send your "
            "message again.")
    return f"{text}\n\nClaude output:\n```\n{tail}\n```" if tail else text


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
