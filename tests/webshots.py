"""The dashboard's screenshots in doc/ (doc/dashboard.md, README.md), taken by headless
Chromium from airut-web serving a state written as the daemons write it:

  make demo && python -m tests.webshots [OUT_DIR]     (default: doc/images)

airut-web runs inside the running lab guest, where airut's units are real (the
overview's unit table is systemd's answer), on a state of its own in the guest's /srv;
the browser on the host reaches it through tests/system/forward.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from airut_core import cgroup
from tests import webstate
from tests.system.forward import Forward
from tests.system.lab import lab_env

TURNS = [
    {"tool": "Bash", "input": {"command": "git log --oneline -5"},
     "output": "4f2a1c9 Parse the config once\n1be77a0 Add the retry delay\n"},
    {"tool": "Read", "input": {"file_path": "/workspace/src/retry.py"},
     "output": "def backoff(attempt):\n    return min(2 ** attempt, 3600)\n"},
    {"tool": "TodoWrite", "input": {"todos": [
        {"content": "Find where the delay is computed", "status": "completed"},
        {"content": "Cap the delay and add a test", "status": "in_progress"},
        {"content": "Open a pull request", "status": "pending"}]}, "output": "ok"},
    {"tool": "Edit", "input": {"file_path": "/workspace/src/retry.py",
                               "old_string": "3600", "new_string": "600"}, "output": "ok"},
    {"tool": "Bash", "input": {"command": "python -m pytest -q tests/test_retry.py"},
     "output": "....                                                [100%]\n4 passed in 0.05s"},
    {"text": "The retry delay is now capped at 10 minutes; tests pass."},
]


def state(root: Path) -> tuple[webstate.Built, str, str]:
    built = webstate.build(root, finished=140, events_bytes=0)
    cid = built.conversations[2]
    running = webstate.run(built.cfg, cid, webstate.events(TURNS)[:9])
    samples = cgroup.samples_file(root / "state/conversations" / cid, running)
    start = time.time() - 95
    for n in range(0, 96, 2):
        cgroup.append_sample(samples, cgroup.Sample(
            start + n, int((180 + 140 * min(n, 40) / 40 + 25 * (n % 7)) * (1 << 20)),
            int(n * 0.55e6 + (n % 9) * 3e5)))
    webstate.queue(built.cfg, conversation_id=cid, text="Also update the changelog.")
    webstate.queue(built.cfg, text="Why does the nightly build fail on arm64?",
                   sender="carol@corp.test")
    return built, running, cid


def shoot(driver, url: str, out: Path, width: int = 1280, height_max: int = 1500) -> None:
    driver.set_window_size(width, 1000)
    driver.get(url)
    time.sleep(1.0)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(height, height_max))
    time.sleep(0.3)
    driver.save_screenshot(str(out))
    print(out)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "doc/images")
    out.mkdir(parents=True, exist_ok=True)
    env = lab_env()
    leader = Path(f"/run/sdlab-{env['AIRUT_GUEST']}.leader").read_text().strip()
    guest_dir = "/srv/webshots"
    host_dir = Path(f"/proc/{leader}/root{guest_dir}")
    shutil.rmtree(host_dir, ignore_errors=True)
    host_dir.mkdir(parents=True)
    built, running, _ = state(host_dir)
    (host_dir / "airut.yaml").write_text(
        f"paths: {{spool: {guest_dir}/spool, state: {guest_dir}/state}}\n"
        "repos: {demo: {repo_url: x}, other: {repo_url: y}}\n")
    subprocess.run(["chmod", "-R", "a+rX", str(host_dir)], check=True)
    port = 5300
    guest = ["nsenter", "-t", leader, "-a"]
    subprocess.run([*guest, "systemd-run", "--unit=airut-webshots", "--collect", "--quiet",
                    f"{env['AIRUT_LAB']}/guest-venv/bin/python", "-m", "airut_web.daemon",
                    "--config", f"{guest_dir}/airut.yaml", "--port", str(port)], check=True)
    forward = Forward(leader, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                forward.connect().close()
                break
            except OSError:
                assert time.monotonic() < deadline, "airut-web did not start in the guest"
                time.sleep(0.2)
        port = forward.port
        url = f"http://127.0.0.1:{port}"
        for scheme in ("light", "dark"):
            options = webdriver.ChromeOptions()
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--force-device-scale-factor=1"):
                options.add_argument(arg)
            if scheme == "dark":
                options.add_argument("--force-dark-mode")
                options.add_argument("--blink-settings=preferredColorScheme=0")
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"),
                                      options=options)
            try:
                if scheme == "dark":
                    shoot(driver, url + "/", out / "dashboard-overview-dark.png")
                    continue
                shoot(driver, url + "/", out / "dashboard-overview.png")
                shoot(driver, f"{url}/task/{running}", out / "dashboard-task.png")
                shoot(driver, f"{url}/conversation/{built.conversations[0]}",
                      out / "dashboard-conversation.png")
                shoot(driver, url + "/repo/demo", out / "dashboard-repo.png")
                shoot(driver, url + "/", out / "dashboard-phone.png", width=390, height_max=1300)
            finally:
                driver.quit()
    finally:
        subprocess.run([*guest, "systemctl", "stop", "airut-webshots.service"], check=False)
        forward.close()
        shutil.rmtree(host_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
