"""The system-test lab: a systemd-nspawn guest running real systemd, podman and airut.

The guest's root filesystem is a directory on the host, and the guest's
/var/spool/airut and /var/lib/airut are bound from a fresh run directory, so the
tests read spool records and workspaces straight from the host while everything
that matters (units, containers, the Claude Code CLI) runs inside the guest.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

LAB_DIR = Path(__file__).resolve().parent.parent / "lab"


def lab_env() -> dict[str, str]:
    out = subprocess.run(["bash", "-c", f". {LAB_DIR}/lab.env; env"], capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


class Lab:
    def __init__(self) -> None:
        env = lab_env()
        self.home = Path(env["AIRUT_LAB"])
        self.name = env["AIRUT_GUEST"]
        self.root = self.home / "guest"
        self.run = self.home / "test-run"
        self.spool = self.run / "spool"
        self.state = self.run / "state"
        self.leader: str | None = None

    # -- lifecycle --------------------------------------------------------------

    def up(self, config: dict) -> None:
        if not (self.root / ".complete").exists():
            raise RuntimeError(f"no lab guest in {self.root}: run `make lab` (tests/lab/build.sh)")
        self.down()
        shutil.rmtree(self.run, ignore_errors=True)
        self.scenario_dir.mkdir(parents=True, exist_ok=True)
        for old in self.scenario_dir.glob("*.json"):
            old.unlink()
        self.write_config(config)
        (self.root / "var/lib/private/airut-demo-model/requests.jsonl").unlink(missing_ok=True)
        out = subprocess.run(["bash", str(LAB_DIR / "up.sh"), str(self.run)], check=True,
                             capture_output=True, text=True)
        self.leader = out.stdout.split()[-1]
        self.guest("sh", "-ec", SEED_REPO)
        self.guest("systemctl", "daemon-reload")
        self.guest("systemctl", "start", "airut-demo-model.service", "airut-firewall.service",
                   *self.proxy_units(config), "airut-runner.service", "dovecot.service",
                   "postfix.service")
        for repo, settings in config.get("repos", {}).items():
            if settings.get("email"):
                self.guest("systemctl", "start", f"airut-email@{repo}.service")

    @staticmethod
    def proxy_units(config: dict) -> list[str]:
        """The DNS responder and the workers the configuration asks for."""
        count = config.get("proxy", {}).get("workers") or 1
        return ["airut-proxy-dns.service", *(f"airut-proxy@{w}.service" for w in range(count))]

    def down(self) -> None:
        subprocess.run(["bash", str(LAB_DIR / "down.sh"), "10"], capture_output=True)
        self.leader = None

    def write_config(self, config: dict) -> None:
        path = self.root / "etc/airut/airut.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))

    # -- commands in the guest -----------------------------------------------------

    def guest(self, *cmd: str, check: bool = True, timeout: float = 120,
              input: str | None = None) -> subprocess.CompletedProcess:
        assert self.leader, "the lab guest is not up"
        result = subprocess.run(["nsenter", "-t", self.leader, "-a", *cmd], capture_output=True,
                                text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def put_file(self, path: str, text: str, mode: str = "644") -> None:
        """Write a file in the guest (its directories made), with this mode."""
        self.guest("install", "-D", f"-m{mode}", "/dev/stdin", path, input=text)

    def airut(self, *args: str, check: bool = True, timeout: float = 600
              ) -> subprocess.CompletedProcess:
        """The `airut` command in the guest, as root."""
        return self.guest("airut", *args, check=check, timeout=timeout)

    def submit(self, text: str, repo: str | None = None, conversation: str | None = None,
               timeout: float = 120) -> dict:
        """`airut submit` in the guest; returns the reply record."""
        target = ["--repo", repo] if repo else ["--conversation", conversation]
        out = self.guest("airut", "submit", "--json", "--timeout", str(timeout), *target, text,
                         check=False, timeout=timeout + 10)
        if out.returncode not in (0, 1):
            raise AssertionError(f"airut submit exited {out.returncode}: {out.stderr}")
        return json.loads(out.stdout)

    def submit_no_wait(self, text: str, repo: str) -> str:
        return self.guest("airut", "submit", "--no-wait", "--repo", repo, text).stdout.strip()

    def wait_reply(self, task: str, timeout: float = 120) -> dict:
        out = self.guest("airut", "wait", "--json", "--timeout", str(timeout), task, check=False,
                         timeout=timeout + 10)
        if out.returncode not in (0, 1):
            raise AssertionError(f"airut wait exited {out.returncode}: {out.stderr}")
        return json.loads(out.stdout)

    def task_units(self) -> list[str]:
        out = self.guest("systemctl", "list-units", "--plain", "--no-legend", "airut-task-*")
        return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]

    def wait_for_unit(self, task: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for unit in self.task_units():
                if task in unit:
                    return unit
            time.sleep(0.1)
        raise AssertionError(f"no unit for task {task} within {timeout} s")

    def unit_properties(self, unit: str, *names: str) -> dict[str, str]:
        out = self.guest("systemctl", "show", unit, "-p", ",".join(names)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def reload_runner(self) -> None:
        """`systemctl reload airut-runner`, returning once it has read its configuration."""
        def reloads() -> int:
            return self.journal("SYSLOG_IDENTIFIER=airut-runner").count("configuration reloaded")
        count = reloads()
        self.guest("systemctl", "reload", "airut-runner.service")
        wait_until(lambda: reloads() > count, 30, "the runner to reload")

    def journal(self, *matches: str) -> str:
        return self.guest("journalctl", "--no-pager", "-o", "cat", *matches).stdout

    # -- mail ---------------------------------------------------------------------------

    def send_mail(self, raw: bytes, sender: str, recipient: str = "airut@corp.test") -> None:
        """Submit a message over SMTP to the guest's postfix (base64 on its standard input:
        the bytes arrive as they are, through nsenter or a VM's guest agent)."""
        self.guest("python3", "-c", SEND_MAIL, sender, recipient,
                   input=base64.b64encode(raw).decode())

    def mailbox(self, user: str, password: str, folder: str = "INBOX") -> list[bytes]:
        """Every message in a lab user's folder, oldest first (read over IMAP)."""
        out = self.guest("python3", "-c", MAILBOX_DUMP, user, password, folder).stdout
        return [base64.b64decode(line) for line in out.split()]

    # -- the demo model -------------------------------------------------------------

    @property
    def scenario_dir(self) -> Path:
        return self.root / "etc/airut/demo-scenarios"

    def scenario(self, name: str, turns: list[dict] | None = None, **extra: object) -> str:
        """Define a demo-model scenario; returns the marker that selects it in a prompt."""
        data = {"turns": turns or [], **extra}
        tmp = self.scenario_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data))
        os.rename(tmp, self.scenario_dir / f"{name}.json")
        return f"[[scenario:{name}]]"

    def model_requests(self) -> list[dict]:
        out = self.guest("cat", "/var/lib/airut-demo-model/requests.jsonl", check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # -- state on the host ------------------------------------------------------------

    def conversation(self, conversation_id: str) -> dict:
        return json.loads((self.conversation_dir(conversation_id) / "conversation.json")
                          .read_text())

    def conversation_dir(self, conversation_id: str) -> Path:
        return self.state / "conversations" / conversation_id


SEND_MAIL = """
import base64, smtplib, sys
with smtplib.SMTP("127.0.0.1", 25) as smtp:
    smtp.sendmail(sys.argv[1], [sys.argv[2]], base64.b64decode(sys.stdin.read()))
"""

# The lab repositories' .airut/network-allowlist.yaml: the model API, one open
# domain, and a path- and method-limited one (all served by the demo model); and
# names and an address the proxy must refuse to reach although they are listed.
ALLOWLIST = """\
domains:
  - allowed.test
  - internal.test
  - localhost
  - 169.254.169.254
url_prefixes:
  - host: api.anthropic.com
    path: /v1/messages*
    methods: [POST]
  - host: api.anthropic.com
    path: /api/claude_code/*
    methods: [GET]
  - host: paths.test
    path: /open/*
    methods: [GET, HEAD]
"""
WRITE_ALLOWLIST = (f"mkdir -p .airut && cat > .airut/network-allowlist.yaml <<'EOF'\n"
                   f"{ALLOWLIST}EOF\n")

def wait_until(predicate, timeout: float, what: str, step: float = 0.3):
    """predicate()'s first true value, asked every `step` seconds for `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def bash(command: str) -> dict:
    """A demo-model turn: the agent runs a shell command."""
    return {"tool": "Bash", "input": {"command": command}}


def say(text: str) -> dict:
    """A demo-model turn: the agent answers."""
    return {"text": text}


MAILBOX_DUMP = """
import base64, imaplib, sys
m = imaplib.IMAP4("127.0.0.1", 143)
m.login(sys.argv[1], sys.argv[2])
if m.select(sys.argv[3], readonly=True)[0] != "OK":
    sys.exit(0)  # no such folder: no messages
for num in m.search(None, "ALL")[1][0].split():
    print(base64.b64encode(m.fetch(num, "(BODY.PEEK[])")[1][0][1]).decode())
"""

SEED_REPO = f"""
rm -rf /tmp/seed /srv/git/demo.git && mkdir -p /srv/git /tmp/seed && cd /tmp/seed
git init -q -b main
printf '# Test project\\n' > README.md
{WRITE_ALLOWLIST}
git add -A
git -c user.name=Test -c user.email=test@example.com commit -qm 'Start'
git clone -q --bare /tmp/seed /srv/git/demo.git
"""
LAB_UPSTREAMS = "127.0.0.1/32"
REAL_API_KEY = "sk-ant-api03-REAL-lab-key-0123456789abcdefghij"
REAL_GH_TOKEN = "ghp_REALlabGitHubToken0123456789abcdefgh"


def base_config(**repos: dict) -> dict:
    """A configuration for the lab: the demo model as the API, quick retries."""
    default_repo = {"repo_url": "/srv/git/demo.git", "masked_secrets": {
        "ANTHROPIC_API_KEY": {"value": REAL_API_KEY, "scopes": ["api.anthropic.com"],
                              "headers": ["x-api-key"]},
        "GH_TOKEN": {"value": REAL_GH_TOKEN, "scopes": ["allowed.test"],
                     "headers": ["Authorization"]}}}
    return {
        # The lab's upstreams (the demo model) live on the guest's loopback address.
        # Two workers: every task network's worker is one of two processes (k mod 2).
        "proxy": {"allowed_private_networks": [LAB_UPSTREAMS], "workers": 2},
        # One API retry: the failure scenarios answer in a second, not in minutes.
        "agent": {"env": {"CLAUDE_CODE_MAX_RETRIES": "1"}},
        "execution": {"retry_delay": 0.2, "max_concurrent": 4, "stop_grace": 5,
                      "sandbox_wait": 5,
                      "outbox_max_bytes": "1M"},
        "repos": {name: {**default_repo, **settings} for name, settings in repos.items()},
    }
