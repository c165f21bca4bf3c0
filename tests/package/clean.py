"""A clean Debian 12 machine (systemd-nspawn) that has never seen airut: the built .deb
is installed into it the way an operator would, and the tests drive it from outside.

The root filesystem comes from tests/package/build.sh (a cached tarball) and is
unpacked afresh for every session; RUN/srv is the guest's /srv, through which the
package, the agent's base image and an npm cache reach the guest (it has no network).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.system.lab import LAB_DIR, SEED_REPO, Lab, bash, say, wait_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NAME = "airut-clean"


def built_deb(suite: str = "deb12") -> Path:
    found = sorted(glob.glob(str(REPO / f"dist/airut_*~{suite}_amd64.deb")))
    if not found:
        raise RuntimeError(f"no dist/airut_*~{suite}_amd64.deb: run `make deb` first")
    return Path(found[-1])


@dataclass
class Upgrade:
    version: str  # what dpkg says is installed afterwards
    runner_restarted: bool  # the runner's main process changed: the new code runs
    reply: dict  # the reply to the task that ran through the upgrade
    failed_records: int  # records quarantined in failed/ (none may be)


def newer_build(deb: Path, tmp: Path) -> Path:
    """The same package with a higher version: what `apt install` of a newer build does."""
    tree = tmp / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    text = control.read_text()
    version = re.search(r"^Version: (.*)$", text, re.M).group(1)
    control.write_text(text.replace(f"Version: {version}", f"Version: {version}+upgrade1"))
    out = tmp / deb.name.replace(version, f"{version}+upgrade1")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


class Operator:
    """What an operator does to a machine, one step each (the tests assert around them;
    the benchmarks run them in a row). Mixed into a Lab whose guest() reaches the
    machine: the clean Debian 12 guest here, the Debian 13 VM (tests/vm)."""

    deb: Path

    def sh(self, script: str, check: bool = True, timeout: float = 600
           ) -> subprocess.CompletedProcess:
        return self.guest("bash", "-ec", script, check=check, timeout=timeout)

    def install(self, deb: Path | None = None, timeout: float = 600) -> float:
        """`apt-get install ./airut_*.deb` (the package is in the machine's /srv); returns
        the seconds it took."""
        deb = deb or self.deb
        started = time.monotonic()
        self.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /srv/{deb.name}",
                timeout=timeout)
        return time.monotonic() - started

    def installed_state(self) -> dict:
        """What `apt install` left before any configuration, to compare with INSTALLED:
        airut's accounts, the modes of the directories that keep its secrets and its
        spool apart, which units are enabled, and whether the runner runs."""
        enabled = self.guest("systemctl", "is-enabled", "airut.target",
                             "airut-demo-model.service", check=False).stdout.split()
        runner = self.guest("systemctl", "is-active", "airut-runner", check=False).stdout
        paths = " ".join(line.split()[0] for line in INSTALLED["modes"])
        return {"accounts": [f"{db} {name}" for db, name in ACCOUNTS
                             if self.guest("getent", db, name, check=False).returncode == 0],
                "modes": self.sh(f"stat -c '%n %a %U:%G' {paths}").stdout.splitlines(),
                "enabled": enabled, "runner": runner.strip()}

    def configure(self, config: str, credentials: dict[str, str]) -> None:
        """airut.yaml and its credentials (root-only files)."""
        self.put_file("/etc/airut/airut.yaml", config)
        for name, value in credentials.items():
            self.put_file(f"/etc/airut/credentials/{name}", value + "\n", mode="600")

    def allow_loopback_upstreams(self) -> None:
        """The proxy allowed to reach this machine's loopback stand-ins for the internet."""
        self.put_file("/etc/systemd/system/airut-proxy@.service.d/upstreams.conf",
                      "[Service]\nIPAddressAllow=127.0.0.1\n")

    def start(self, *extra: str, timeout: float = 120) -> float:
        """`systemctl enable --now airut.target` (and extra units); the seconds until every
        daemon is active."""
        self.guest("systemctl", "daemon-reload")
        started = time.monotonic()
        self.guest("systemctl", "enable", "--now", *extra, "airut.target", timeout=timeout)
        wait_until(lambda: self.guest("systemctl", "is-active", *DAEMONS, *extra, check=False)
                   .stdout.split() == ["active"] * (len(DAEMONS) + len(extra)), timeout,
                   "every airut unit to be active")
        return time.monotonic() - started

    def security_scores(self) -> dict[str, float]:
        """`systemd-analyze security` of every airut unit (lower is less exposed)."""
        scores = {}
        for unit in HARDENING_LIMITS:
            out = self.guest("systemd-analyze", "security", "--no-pager", f"{unit}.service",
                             check=False).stdout
            scores[unit] = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out)[1])
        return scores

    def upgrade_during_a_task(self, newer: Path, timeout: float = 120) -> Upgrade:
        """`apt install` of a newer build (in the machine's /srv) while a task runs."""
        runner = self.main_pid("airut-runner")
        marker = self.scenario("upgrade", [bash("sleep 15; echo survived"),
                                           say("{tool_result} the upgrade")])
        task = self.submit_no_wait(f"{marker} go", repo="demo")
        self.wait_for_unit(task, timeout=timeout)
        self.install(newer, timeout=timeout * 5)
        version = self.guest("dpkg-query", "-W", "-f", "${Version}", "airut").stdout
        restarted = self.main_pid("airut-runner") != runner
        reply = self.wait_reply(task, timeout=timeout)
        queues = json.loads(self.airut("status", "--json").stdout)["queues"]
        failed = sum(v for k, v in queues.items() if k.startswith("failed/"))
        return Upgrade(version, restarted, reply, failed)

    def main_pid(self, unit: str) -> str:
        return self.guest("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip()

    def daemon_users(self) -> dict[str, str]:
        """The user each daemon's main process runs as."""
        return {unit: self.guest("ps", "-o", "user=", "-p", self.main_pid(unit)).stdout.strip()
                for unit in OWN_USERS}

    def reachable(self) -> list[tuple[str, list[str]]]:
        """Of what a daemon's user must not reach (FORBIDDEN), what it did reach or failed
        to reach for another reason than a denied permission: nothing, or the test fails."""
        wrong = []
        for user, command in FORBIDDEN:
            out = self.guest("runuser", "-u", user, "--", *command, check=False)
            if out.returncode == 0 or "Permission denied" not in out.stderr:
                wrong.append((user, command))
        return wrong

    def purge_leftovers(self) -> list[str]:
        """`apt-get purge airut`, then what it left behind (nothing, or the test fails
        naming it): units, users, groups, directories, the firewall table, images."""
        self.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q airut")
        left = []
        left += self.guest("systemctl", "list-units", "--all", "--plain", "--no-legend",
                           "airut*").stdout.splitlines()
        left += self.guest("systemctl", "list-unit-files", "--plain", "--no-legend", "airut*",
                           check=False).stdout.splitlines()  # exits 1 when none matches
        for db, name in ACCOUNTS:
            if self.guest("getent", db, name, check=False).returncode != 2:
                left.append(f"{db} entry {name}")
        left += self.sh("ls -d /etc/airut /var/lib/airut /var/lib/airut-proxy /var/spool/airut "
                        "/var/cache/airut /run/airut /usr/lib/airut 2>/dev/null || true"
                        ).stdout.splitlines()
        if self.guest("nft", "list", "table", "inet", "airut", check=False).returncode == 0:
            left.append("nft table inet airut")
        left += self.guest("podman", "images", "-q", "--filter", "label=airut.tree"
                           ).stdout.splitlines()
        return [line for line in left if line.strip()]


class CleanGuest(Operator, Lab):
    def __init__(self) -> None:
        super().__init__()
        self.name = NAME
        self.root = self.home / "clean12"
        self.run = self.home / "clean12-run"
        self.spool = self.root / "var/spool/airut"
        self.state = self.root / "var/lib/airut"
        self.env = {**os.environ, "LAB_NAME": NAME, "LAB_ROOT": str(self.root),
                    "LAB_MODE": "clean"}

    def boot(self, deb: Path) -> None:
        """Unpack a fresh machine, hand it the package and what the test needs, boot it."""
        self.deb = deb
        self.down()
        subprocess.run(["bash", str(HERE / "build.sh"), str(deb)], check=True)
        for old in (self.root, self.run):
            shutil.rmtree(old, ignore_errors=True)
        self.root.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(self.home / "clean12.tar"), "-C", str(self.root)],
                       check=True)
        srv = self.run / "srv"
        srv.mkdir(parents=True)
        shutil.copy(deb, srv / deb.name)
        shutil.copy(self.home / "base.tar", srv / "base.tar")
        shutil.copytree(self.home / "npm-cache", srv / "npm-cache", symlinks=True)
        out = subprocess.run(["bash", str(LAB_DIR / "up.sh"), str(self.run)], check=True,
                             capture_output=True, text=True, env=self.env)
        self.leader = out.stdout.split()[-1]

    def down(self) -> None:
        subprocess.run(["bash", str(LAB_DIR / "down.sh"), "10"], capture_output=True,
                       env=getattr(self, "env", None))
        self.leader = None

    def configure(self, config: str, credentials: dict[str, str]) -> None:
        """The sample repository, airut.yaml and its credentials."""
        self.guest("sh", "-ec", SEED_REPO)
        super().configure(config, credentials)
        self.scenario_dir.mkdir(exist_ok=True)  # the demo model's scripted answers

    def setup_claude(self) -> subprocess.CompletedProcess:
        """`airut setup claude` from the npm cache, asking the registry it was made with."""
        registry = (self.run / "srv/npm-cache/.registry").read_text().strip()
        return self.airut("setup", "claude", "--", "--offline", "--cache", "/srv/npm-cache",
                          "--registry", registry)

    def prepare_sandbox(self) -> None:
        """The operator's part of the sandbox: the agents' base image (doc/images.md), and
        the proxy allowed to reach this machine's loopback stand-ins."""
        self.sh("podman import -q /srv/base.tar localhost/airut-base:latest >/dev/null")
        self.allow_loopback_upstreams()

    def provision(self, config: str, credentials: dict[str, str]) -> tuple[float, float]:
        """Every step above in a row, with the demo model on; returns the seconds of the
        install and of the start."""
        install = self.install()
        self.configure(config, credentials)
        self.setup_claude()
        self.prepare_sandbox()
        self.guest("systemctl", "enable", "--now", "airut-demo-model.service")
        return install, self.start()


# The users and groups the package makes (sysusers.d), as getent databases name them.
ACCOUNTS = [("passwd", "airut-proxy"), ("passwd", "airut-email"), ("passwd", "airut-slack"),
            ("passwd", "airut-web"), ("group", "airut"), ("group", "airut-ingest")]
# What `apt install` leaves before any configuration (Operator.installed_state): the
# credentials root's own, the channels' incoming/ shared, the runner's active/ its
# own, the conversations airut's; airut.target enabled but not the demo model, and
# nothing started.
INSTALLED = {
    "accounts": [f"{db} {name}" for db, name in ACCOUNTS],
    "modes": ["/etc/airut/credentials 700 root:root",
              "/var/spool/airut/incoming 770 root:airut-ingest",
              "/var/spool/airut/active 750 root:root",
              "/var/lib/airut/conversations 750 root:airut"],
    "enabled": ["enabled", "disabled"],
    "runner": "inactive",
}

# The highest `systemd-analyze security` exposure each unit may have (doc/security.md
# reports the scores): a regression fails the test.
HARDENING_LIMITS = {"airut-runner": 6.0, "airut-housekeeping": 6.0, "airut-proxy@0": 2.0,
                    "airut-proxy-dns": 2.0,
                    "airut-email@demo": 2.0, "airut-firewall": 2.5, "airut-demo-model": 2.0,
                    "airut-web": 2.0, "airut-slack@demo": 2.0, "airut-schedule@demo": 1.5}

# What a channel's user and the proxy's user must not reach: the runner's secrets,
# its spool stages and the proxy's policies; the spool, and the mail password.
FORBIDDEN = [
    ("airut-email", ["cat", "/etc/airut/credentials/anthropic-api-key"]),
    ("airut-email", ["touch", "/var/spool/airut/active/forged.json"]),
    ("airut-email", ["ls", "/run/airut/policies"]),
    ("airut-slack", ["cat", "/etc/airut/credentials/anthropic-api-key"]),
    ("airut-slack", ["cat", "/etc/airut/credentials/mail-demo"]),
    ("airut-slack", ["touch", "/var/spool/airut/active/forged.json"]),
    ("airut-slack", ["touch", "/var/spool/airut/outgoing/forged.json"]),
    ("airut-proxy", ["ls", "/var/spool/airut/incoming"]),
    ("airut-proxy", ["ls", "/var/spool/airut/active"]),
    ("airut-proxy", ["cat", "/etc/airut/credentials/mail-demo"]),
    # The dashboard reads the spool and conversation state; it writes only control/.
    ("airut-web", ["touch", "/var/spool/airut/active/forged.json"]),
    ("airut-web", ["touch", "/var/spool/airut/incoming/tmp/forged.json"]),
    ("airut-web", ["touch", "/var/lib/airut/conversations/forged"]),
    ("airut-web", ["cat", "/etc/airut/credentials/anthropic-api-key"]),
    ("airut-web", ["ls", "/run/airut/policies"]),
]
OWN_USERS = {"airut-runner": "root", "airut-proxy@0": "airut-proxy",
             "airut-proxy-dns": "airut-proxy",
             "airut-email@demo": "airut-email", "airut-web": "airut-web"}

# What airut.target starts on a configuration with one repository that has an email block.
DAEMONS = ("airut-firewall.service", "airut-proxy@0.service", "airut-proxy-dns.service",
           "airut-runner.service",
           "airut-email@demo.service", "airut-web.service", "airut-housekeeping.timer")
