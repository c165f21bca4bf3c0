"""A clean Debian 12 machine (systemd-nspawn) that has never seen airut: the built .deb
is installed into it the way an operator would, and the tests drive it from outside.

The root filesystem comes from tests/package/build.sh (a cached tarball) and is
unpacked afresh for every session; RUN/srv is the guest's /srv, through which the
package, the agent's base image and an npm cache reach the guest (it has no network).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from tests.system.lab import LAB_DIR, Lab, lab_env

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NAME = "airut-clean"


def built_deb(suite: str = "deb12") -> Path:
    found = sorted(glob.glob(str(REPO / f"dist/airut_*~{suite}_amd64.deb")))
    if not found:
        raise RuntimeError(f"no dist/airut_*~{suite}_amd64.deb: run `make deb` first")
    return Path(found[-1])


class CleanGuest(Lab):
    def __init__(self) -> None:
        super().__init__()
        env = lab_env()
        self.home = Path(env["AIRUT_LAB"])
        self.name = NAME
        self.root = self.home / "clean12"
        self.run = self.home / "clean12-run"
        self.spool = self.root / "var/spool/airut"
        self.state = self.root / "var/lib/airut"
        self.env = {**os.environ, "LAB_NAME": NAME, "LAB_ROOT": str(self.root),
                    "LAB_MODE": "clean"}

    def boot(self, deb: Path) -> None:
        """Unpack a fresh machine, hand it the package and what the test needs, boot it."""
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

    def sh(self, script: str, check: bool = True, timeout: float = 600
           ) -> subprocess.CompletedProcess:
        return self.guest("bash", "-ec", script, check=check, timeout=timeout)
