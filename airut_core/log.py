"""Logging to journald with structured fields.

Every line about a task carries AIRUT_TASK, AIRUT_CONVERSATION and AIRUT_REPO,
so `journalctl AIRUT_TASK=<id>` shows a task's whole story across daemons (the
task unit adds AIRUT_TASK to its own output through LogExtraFields).
Outside systemd (a terminal, tests) lines go to stderr with the fields appended.
"""

from __future__ import annotations

import logging
import os
import sys

FIELDS = {"task": "AIRUT_TASK", "conversation": "AIRUT_CONVERSATION", "repo": "AIRUT_REPO",
          "sandbox": "AIRUT_SANDBOX"}
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def _fields(record: logging.LogRecord) -> dict[str, str]:
    return {key: str(v) for attr, key in FIELDS.items() if (v := getattr(record, attr, None))}


class JournalHandler(logging.Handler):
    def __init__(self, identifier: str):
        super().__init__()
        import pystemd.journal  # only needed where journald is

        self._sendv = pystemd.journal.sendv
        self.identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sendv(
                MESSAGE=self.format(record),
                PRIORITY=str(_PRIORITY.get(record.levelno, 6)),
                SYSLOG_IDENTIFIER=self.identifier,
                CODE_FILE=record.pathname,
                CODE_LINE=str(record.lineno),
                CODE_FUNC=record.funcName,
                AIRUT_LOGGER=record.name,
                **_fields(record),
            )
        except Exception:
            self.handleError(record)


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return f"{line} [{extra}]" if extra else line


def setup(identifier: str, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if os.environ.get("JOURNAL_STREAM"):
        handler: logging.Handler = JournalHandler(identifier)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = f"%(asctime)s {identifier} %(levelname)s %(message)s"
        handler.setFormatter(_StderrFormatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


def for_task(logger: logging.Logger, task: str | None = None, conversation: str | None = None,
             repo: str | None = None) -> logging.LoggerAdapter:
    """A logger whose every line carries the task's journal fields."""
    return logging.LoggerAdapter(logger, {"task": task, "conversation": conversation,
                                          "repo": repo})
