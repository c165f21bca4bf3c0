"""Where things live on disk. Every daemon agrees on this layout through this module."""

from __future__ import annotations

import functools
import grp
import re
from pathlib import Path

from airut_core.spool import Stage

DEFAULT_CONFIG = Path("/etc/airut/airut.yaml")
DEFAULT_SPOOL = Path("/var/spool/airut")
DEFAULT_STATE = Path("/var/lib/airut")

# Names that end up in paths and unit names. Checked wherever they enter.
CONVERSATION_ID = re.compile(r"^[0-9a-f]{8}$")
TASK_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")
CHANNEL = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


# The group of airut's daemons that read conversation state (the proxy appends to
# network.log; channels and the dashboard read conversation.json). Conversation
# directories are 0750 root:airut: nobody else on the host reads them.
DAEMON_GROUP = "airut"


@functools.cache
def daemon_gid() -> int | None:
    """The group's id, or None where it does not exist (a development checkout)."""
    try:
        return grp.getgrnam(DAEMON_GROUP).gr_gid
    except KeyError:
        return None


class Spool:
    """The spool's stages. Writers per stage:

    incoming/           ingest daemons and `airut submit`     (new task records)
    active/             airut-runner                          (claimed tasks)
    finished/           task units' ExecStopPost              (how a task unit ended)
    builds/             image build units' ExecStopPost       (how an image build ended)
    outgoing/<channel>/ airut-runner                          (reply records)
    control/            airut-web and `airut stop`            (stop requests)
    commands/           `airut sandbox run`, `airut schedule fire` (commands to run)
    command-ends/       command units' ExecStopPost           (how a command unit ended)
    deferred/<channel>/ the channel's daemon                  (replies waiting to retry)
    failed/<stage>/     the stage's consumer                  (quarantine, with reasons)
    """

    def __init__(self, root: Path | str = DEFAULT_SPOOL):
        self.root = Path(root)
        self.incoming = Stage(self.root / "incoming")
        self.active = Stage(self.root / "active")
        self.finished = Stage(self.root / "finished")
        self.builds = Stage(self.root / "builds")
        self.control = Stage(self.root / "control")
        self.commands = Stage(self.root / "commands")
        self.command_ends = Stage(self.root / "command-ends")

    def outgoing(self, channel: str) -> Stage:
        return Stage(self.root / "outgoing" / _checked(CHANNEL, channel, "channel"))

    def failed(self, stage: str) -> Stage:
        return Stage(self.root / "failed" / stage)

    def ensure(self) -> Spool:
        for stage in (self.incoming, self.active, self.finished, self.builds, self.control,
                      self.commands, self.command_ends):
            stage.ensure()
        return self


def conversation_dir(state_dir: Path | str, conversation_id: str) -> Path:
    return Path(state_dir) / "conversations" / _checked(CONVERSATION_ID, conversation_id,
                                                        "conversation id")


def _checked(pattern: re.Pattern, value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"invalid {what}: {value!r}")
    return value
