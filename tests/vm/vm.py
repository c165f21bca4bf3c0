"""The cgroup v2 lane: a real Debian 13 machine (qemu, no KVM) that installs airut's
Debian 13 package.

The nspawn labs share this host's cgroup v1; Debian 12 and 13 boot on cgroup v2,
where the kernel and systemd report and enforce limits differently, and Debian 13's
systemd (257) boots on nothing else. This lab boots a clean Debian 13 server with
systemd as PID 1 on cgroup2fs, the package waiting in /srv, the lab's stand-ins for the
internet and its mail system, and drives it through the QEMU guest agent; the tests
install, configure and start airut as an operator does (tests/package/clean.py's
Operator steps).

It offers the nspawn Lab's interface (guest, submit, wait_reply, unit_properties,
journal, scenario, ...), so a test reads the same in both labs; what the nspawn lab
reads from the host's view of the guest, this one reads through the agent.

    python -m tests.vm.vm CMD...   runs a command in a running VM (AIRUT_LAB_KEEP=1)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.package.clean import Operator, built_deb
from tests.system.lab import ALLOWLIST, LAB_DIR, Lab
from tests.vm.qga import GuestAgent

VM_DIR = LAB_DIR / "vm"
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 300  # TCG boots in 15-30 s on an idle machine; allow for a busy one


class Vm(Operator, Lab):
    def __init__(self) -> None:
        super().__init__()
        self.vm = self.home / "vm"
        self.root = self.vm / "rootfs"
        self.run = self.home / "vm-run"
        self.agent = GuestAgent(self.run / "qga.sock")
        self.timings: dict[str, float] = {}
        self.deb = built_deb("deb13")

    # -- lifecycle --------------------------------------------------------------

    def up(self) -> None:
        if shutil.which(QEMU) is None:
            raise RuntimeError(f"{QEMU} is missing: `make lab-vm` installs it "
                               "(Debian package qemu-system-x86)")
        if not (self.root / ".complete").exists():
            raise RuntimeError(f"no VM root filesystem in {self.root}: run `make lab-vm` "
                               "(tests/lab/vm/build.sh)")
        self.down()
        seed_repository(self.root / "srv/git/demo.git")
        started = time.monotonic()
        made = subprocess.run(["bash", str(VM_DIR / "up.sh"), str(self.run), str(self.deb)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"tests/lab/vm/up.sh exited {made.returncode}: "
                               f"{made.stderr[-2000:]}")
        self.timings["disk image"] = time.monotonic() - started
        started = time.monotonic()
        try:
            self.agent.connect(BOOT_TIMEOUT)
            self.timings["boot to guest agent"] = time.monotonic() - started
            state = self.guest("systemctl", "is-system-running", "--wait", check=False,
                               timeout=BOOT_TIMEOUT).stdout.strip()
        except Exception as e:
            raise RuntimeError(f"the VM did not boot: {e}\n{self.console_tail()}") from e
        self.timings["boot to multi-user"] = time.monotonic() - started
        failed = self.guest("systemctl", "list-units", "--failed", "--plain",
                            "--no-legend").stdout
        if state != "running":
            raise RuntimeError(f"the VM booted {state}; failed units:\n{failed}")

    def down(self) -> None:
        self.agent.close()
        subprocess.run(["bash", str(VM_DIR / "down.sh"), str(self.run), "10"],
                       capture_output=True)

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = (self.run / "console.log").read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "console (end):\n" + "\n".join(text.splitlines()[-lines:])

    # -- commands in the guest ------------------------------------------------------

    def guest(self, *cmd: str, check: bool = True, timeout: float = 120,
              input: str | None = None) -> subprocess.CompletedProcess:
        result = self.agent.run(list(cmd), timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def read(self, path: str) -> str:
        return self.guest("cat", path).stdout

    def write(self, path: str, text: str) -> None:
        """Write a file in the guest whole: readers never see half of it."""
        self.guest("sh", "-c", 'cat > "$1.tmp" && mv "$1.tmp" "$1"', "sh", path, input=text)

    def scenario(self, name: str, turns: list[dict] | None = None, **extra: object) -> str:
        self.write(f"/etc/airut/demo-scenarios/{name}.json",
                   json.dumps({"turns": turns or [], **extra}))
        return f"[[scenario:{name}]]"

    def conversation(self, conversation_id: str) -> dict:
        return json.loads(self.read(f"/var/lib/airut/conversations/{conversation_id}/"
                                    "conversation.json"))

    def cgroup(self, unit: str) -> str:
        """The unit's directory in the guest's cgroup2 tree."""
        group = self.unit_properties(unit, "ControlGroup")["ControlGroup"]
        assert group, f"{unit} has no control group (not running?)"
        return f"/sys/fs/cgroup{group}"


IMAGE_MARK = "built-from-the-repository"


def seed_repository(bare: Path) -> None:
    """The lab repository, made on the host: a README, the network allowlist, and a
    Dockerfile, so tasks run in an image the runner builds in a unit of its own."""
    shutil.rmtree(bare, ignore_errors=True)
    bare.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        git = ["git", "-C", work, "-c", "user.name=Test", "-c", "user.email=test@example.com"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        Path(work, "README.md").write_text("# Test project\n")
        Path(work, ".airut").mkdir()
        Path(work, ".airut/network-allowlist.yaml").write_text(ALLOWLIST)
        Path(work, ".airut/container").mkdir()
        Path(work, ".airut/container/Dockerfile").write_text(
            f"FROM localhost/airut-base:latest\nRUN echo {IMAGE_MARK} > /etc/image-mark\n")
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "Start"], check=True)
        subprocess.run(["git", "clone", "-q", "--bare", work, str(bare)], check=True)


if __name__ == "__main__":
    vm = Vm()
    vm.agent.connect(10)
    done = vm.guest(*sys.argv[1:], check=False, timeout=600)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    sys.exit(done.returncode)
