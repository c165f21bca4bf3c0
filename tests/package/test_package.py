"""The built .deb in a clean Debian 12 machine, as an operator meets it: install, configure,
check, start, a mail round trip through the guest's own postfix and dovecot, the
journal of one task, the daemons' users, an upgrade while a task runs, and purge.

The tests run in file order on one machine: each step starts where the last left it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.package.clean import (
    HARDENING_LIMITS,
    INSTALLED,
    OWN_USERS,
    CleanGuest,
    built_deb,
    newer_build,
)
from tests.system.lab import bash, say, wait_until
from tests.system.mail import answer, signed

CONFIG = """\
# A first repository: the demo model plays Anthropic's API at api.anthropic.com
# (the lab's stand-in on this machine's loopback address).
proxy:
  allowed_private_networks: [127.0.0.1/32]
repos:
  demo:
    repo_url: /srv/git/demo.git
    masked_secrets:
      ANTHROPIC_API_KEY:
        value: !secret anthropic-api-key
        scopes: [api.anthropic.com]
        headers: [x-api-key]
    email:
      address: airut@corp.test
      trusted_authserv_id: mx.corp.test
      authorized_senders: ["*@corp.test"]
      imap: {host: mx.corp.test, port: 143, security: starttls, poll_interval: 5,
             ca_file: /etc/airut/lab-tls/ca.pem, username: airut@corp.test,
             password: !secret mail-demo}
      smtp: {host: mx.corp.test, port: 587, security: starttls,
             ca_file: /etc/airut/lab-tls/ca.pem, username: airut@corp.test,
             password: !secret mail-demo}
"""
API_KEY = "sk-ant-api03-installed-package-key-0123456789abcdef"
ALICE = ("alice@corp.test", "alice-pass")
CREDENTIALS = {"mail-demo": "airut-pass", "anthropic-api-key": API_KEY}


@pytest.fixture(scope="module")
def machine():
    deb = built_deb()
    guest = CleanGuest()
    guest.boot(deb)
    yield guest
    if not os.environ.get("AIRUT_LAB_KEEP"):  # set it to look around after a failure
        guest.down()


def test_install_makes_users_directories_and_enabled_units(machine):
    assert machine.guest("sh", "-c", "command -v airut", check=False).returncode != 0
    print(f"\napt install of {machine.deb.name}: {machine.install():.1f} s")
    assert machine.installed_state() == INSTALLED


def test_configure_setup_claude_and_check(machine):
    machine.configure(CONFIG, CREDENTIALS)
    missing = machine.airut("check", "--offline", check=False)
    assert missing.returncode == 1
    assert re.search(r"^FAIL  Claude Code CLI: .* is missing; run: airut setup claude$",
                     missing.stdout, re.M), missing.stdout
    assert "Claude Code 2." in machine.setup_claude().stdout
    machine.prepare_sandbox()
    check = machine.airut("check", check=False)
    assert check.returncode == 0, check.stdout
    assert "all checks passed" in check.stdout
    for name in ("configuration", "secret anthropic-api-key", "secret mail-demo", "podman",
                 "cgroups", "nftables", "Claude Code CLI", "proxy CA", "repository demo",
                 "email demo: IMAP", "email demo: SMTP"):
        assert re.search(rf"^ok    {re.escape(name)}", check.stdout, re.M), (name, check.stdout)
    assert "allowlist parses" in check.stdout


@pytest.mark.parametrize(("change", "line"), [
    (lambda c: c.replace("repos:\n", "repos: [\n", 1),
     r"FAIL  configuration: /etc/airut/check.yaml: not valid YAML"),
    (lambda c: c.replace("proxy:\n", "proxy:\n  allowed_privat_networks: []\n", 1),
     r"FAIL  configuration: .*proxy: unknown key allowed_privat_networks"),
    (lambda c: c.replace("!secret mail-demo}", "!secret mail-missing}"),
     r"FAIL  secret mail-missing: neither /etc/airut/credentials/mail-missing nor "),
    (lambda c: "agent: {claude_binary: /var/cache/airut/claude/0.0.1/claude}\n" + c,
     r"FAIL  Claude Code CLI: /var/cache/airut/claude/0.0.1/claude is missing; "
     r"run: airut setup claude"),
    (lambda c: c.replace("port: 143", "port: 1"),
     r"FAIL  email demo: IMAP mx.corp.test: mx.corp.test:1 \(starttls\): "
     r"ConnectionRefusedError"),
], ids=["broken-yaml", "unknown-key", "unreadable-secret", "missing-cli", "no-imap"])
def test_check_fails_with_the_line_that_names_the_problem(machine, change, line):
    machine.put_file("/etc/airut/check.yaml", change(CONFIG))
    out = machine.airut("check", "--config", "/etc/airut/check.yaml", check=False)
    assert out.returncode == 1, out.stdout
    failed = [x for x in out.stdout.splitlines() if x.startswith("FAIL")]
    assert len(failed) == 1 and re.match(line, failed[0]), out.stdout


def test_enable_starts_every_unit_and_the_channel_the_config_defines(machine):
    took = machine.start("airut-demo-model.service")
    print(f"\nsystemctl enable --now airut.target to all units active: {took:.1f} s")
    assert machine.guest("systemctl", "show", "-p", "Wants", "--value", "airut.target").stdout \
        .split().count("airut-email@demo.service") == 1  # the generator's instance
    handed = machine.guest("ls", "/run/credentials/airut-email@demo.service").stdout.split()
    assert handed == ["mail-demo"]


def test_a_signed_mail_gets_a_threaded_reply(machine, dkim_key):
    marker = machine.scenario("installed", [bash("curl -s -o /dev/null -w '%{http_code}' "
                                                 "https://other.test/installed-probe"),
                                            say("installed and answering: {tool_result}")])
    raw, message_id = signed(dkim_key, "alice@corp.test", "First task", f"{marker} hello")
    machine.send_mail(raw, "alice@corp.test")
    reply = wait_until(lambda: answer(machine, *ALICE, message_id, "installed and answering"),
                       120,
                       "the answer in alice's mailbox")
    assert "installed and answering: 403" in reply.get_body(("plain",)).get_content()
    assert reply["From"] == "airut@corp.test" and message_id in reply["References"]
    keys = {r["headers"].get("x-api-key") for r in machine.model_requests()}
    assert keys == {API_KEY}  # unsealed by the runner from its credential, swapped by the proxy


def test_logs_show_one_task_from_every_daemon(machine):
    tasks = json.loads(machine.airut("tasks", "--json").stdout)
    assert len(tasks) == 1 and tasks[0]["sender"] == "alice@corp.test", tasks
    task = tasks[0]
    other = machine.airut("submit", "--repo", "demo", "another task").stdout
    logs = machine.airut("logs", task["task"]).stdout
    for source in ("airut-email@demo", "airut-runner", "airut-proxy", "podman"):
        assert re.search(rf" {re.escape(source)}\[\d+\]: ", logs), (source, logs)
    assert f"systemd[1]: Started {task['unit']}" in logs
    assert "BLOCKED GET other.test /installed-probe" in logs
    others = json.loads(machine.airut("tasks", "--json").stdout)
    other_id = next(t["task"] for t in others if t["task"] != task["task"])
    assert other_id not in logs and "another task" not in logs and other


def test_units_are_hardened(machine):
    scores = machine.security_scores()
    print("\nsystemd-analyze security: " + ", ".join(f"{u} {s}" for u, s in scores.items()))
    assert all(scores[unit] <= limit for unit, limit in HARDENING_LIMITS.items()), scores


def test_each_daemon_runs_as_its_own_user_and_reaches_only_its_own(machine):
    assert machine.daemon_users() == OWN_USERS
    assert machine.reachable() == []


def test_an_upgrade_while_a_task_runs_loses_nothing(machine, tmp_path: Path):
    newer = newer_build(machine.deb, tmp_path)
    (machine.run / "srv" / newer.name).write_bytes(newer.read_bytes())
    upgrade = machine.upgrade_during_a_task(newer)
    assert upgrade.version.endswith("+upgrade1")
    assert upgrade.runner_restarted  # the new code runs
    reply = upgrade.reply
    assert reply["outcome"] == "success" and "survived the upgrade" in reply["text"], reply
    assert upgrade.failed_records == 0


def test_purge_leaves_nothing_behind(machine):
    assert machine.purge_leftovers() == []
