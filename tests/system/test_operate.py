"""The operator's side in the lab guest: secrets as credentials, channels that follow the
configuration (airut-generator, `airut reload`), and `airut status|tasks|logs`. (`airut
check` is tested on the installed package: tests/package.)

The module adds a repository "vault" whose mail password and model key are named with
`!secret` and live in /etc/airut/credentials; its mailbox is bob@corp.test.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.system.lab import REAL_API_KEY, bash, say, wait_until
from tests.system.mail import answer, signed

VAULT_KEY = "sk-ant-api03-VAULT-key-from-a-credential-0123456789"
CREDENTIALS = "/etc/airut/credentials"
VAULT_UNIT = "airut-email@vault.service"
CAROL = ("carol@corp.test", "carol-pass")


def vault() -> dict:
    tls = "/etc/airut/lab-tls/ca.pem"
    return {
        "repo_url": "/srv/git/demo.git",
        "masked_secrets": {"ANTHROPIC_API_KEY": {
            "value": "SECRET:vault-api-key", "scopes": ["api.anthropic.com"],
            "headers": ["x-api-key"]}},
        "email": {
            "address": "bob@corp.test", "trusted_authserv_id": "mx.corp.test",
            "authorized_senders": ["carol@corp.test"],
            "imap": {"host": "mx.corp.test", "port": 143, "security": "starttls",
                     "username": "bob@corp.test", "password": "SECRET:mail-vault",
                     "poll_interval": 5, "ca_file": tls},
            "smtp": {"host": "mx.corp.test", "port": 587, "security": "starttls",
                     "username": "bob@corp.test", "password": "SECRET:mail-vault",
                     "ca_file": tls}}}


def dump(config: dict) -> str:
    """YAML with `!secret NAME` where the dict says "SECRET:NAME"."""
    return re.sub(r"'?SECRET:([A-Za-z0-9_.-]+)'?", r"!secret \1", yaml.safe_dump(config))


@pytest.fixture(scope="module")
def operated(lab):
    """The lab's configuration plus "vault", applied with `airut reload`; put back after."""
    original = (lab.root / "etc/airut/airut.yaml").read_text()
    config = yaml.safe_load(original)
    config["repos"]["vault"] = vault()
    lab.put_file(f"{CREDENTIALS}/mail-vault", "bob-pass\n", mode="600")
    lab.put_file(f"{CREDENTIALS}/vault-api-key", VAULT_KEY + "\n", mode="600")
    lab.put_file("/etc/airut/airut.yaml", dump(config))
    # As on a server: airut.target runs (`airut reload` starts new channels only then).
    lab.guest("systemctl", "start", "airut.target")
    out = lab.airut("reload")
    yield out.stdout
    lab.put_file("/etc/airut/airut.yaml", original)
    gone = lab.airut("reload").stdout
    assert f"stopped {VAULT_UNIT}" in gone, gone
    lab.guest("rm", "-f", f"{CREDENTIALS}/mail-vault", f"{CREDENTIALS}/vault-api-key")


def test_reload_starts_the_new_channel_and_it_holds_only_its_own_secret(lab, operated):
    assert f"started {VAULT_UNIT}" in operated and "airut-runner re-read" in operated
    wait_until(lambda: lab.guest("systemctl", "is-active", VAULT_UNIT, check=False)
               .stdout.strip() == "active", 30, "airut-email@vault to start")
    handed = lab.guest("ls", f"/run/credentials/{VAULT_UNIT}").stdout.split()
    assert handed == ["mail-vault"]  # not the model key, not another repository's
    # The channel's user cannot read the secrets themselves, nor the runner's stages.
    as_email = ["runuser", "-u", "airut-email", "--"]
    denied = lab.guest(*as_email, "cat", f"{CREDENTIALS}/vault-api-key", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    wrote = lab.guest(*as_email, "touch", "/var/spool/airut/active/forged.json", check=False)
    assert wrote.returncode != 0 and "Permission denied" in wrote.stderr
    assert lab.unit_properties(VAULT_UNIT, "User")["User"] == "airut-email"
    proxy = lab.guest("runuser", "-u", "airut-proxy", "--", "ls", "/var/spool/airut/incoming",
                      check=False)
    assert proxy.returncode != 0 and "Permission denied" in proxy.stderr


def test_a_mail_is_answered_with_secrets_from_credentials(lab, operated, dkim_key):
    marker = lab.scenario("vault-blocked", [bash("curl -s -o /dev/null -w '%{http_code}' "
                                                 "https://other.test/vault-probe"),
                                            say("probe said {tool_result}")])
    raw, message_id = signed(dkim_key, "carol@corp.test", "Vault", f"{marker} go",
                             to="bob@corp.test")
    lab.send_mail(raw, "carol@corp.test", "bob@corp.test")
    reply = wait_until(lambda: answer(lab, *CAROL, message_id, "probe said"), 120,
                       "the answer from bob@")  # after the acknowledgment
    assert "probe said 403" in reply.get_body(("plain",)).get_content()
    keys = {r["headers"].get("x-api-key") for r in lab.model_requests()
            if "vault-probe" in json.dumps(r["body"])}
    assert keys == {VAULT_KEY}  # the runner unsealed it; the proxy swapped it in
    assert REAL_API_KEY not in keys


def _vault_task(lab) -> dict:
    found = json.loads(lab.airut("tasks", "--repo", "vault", "--json").stdout)
    assert found, "no task of vault"
    return found[0]


def test_tasks_lists_the_mail_task_and_logs_tells_its_whole_story(lab, operated):
    task = _vault_task(lab)
    assert task["sender"] == "carol@corp.test" and task["outcome"] == "success", task
    assert task["repo"] == "vault" and task["duration_s"] and task["unit"]
    other = lab.submit("hello from another task", repo="demo")
    logs = lab.airut("logs", task["task"]).stdout
    # The channel, the runner, the proxy, and the task unit: systemd's lines about it and
    # what runs in it (podman's own events; the agent's stderr, were there any).
    for source in ("airut-email@vault", "airut-runner", "airut-proxy", "podman"):
        assert re.search(rf" {re.escape(source)}\[\d+\]: ", logs), (source, logs)
    assert f"systemd[1]: Started {task['unit']}" in logs
    assert f"{task['unit']}: Deactivated successfully" in logs
    assert "BLOCKED" in logs and "other.test" in logs  # the proxy's line for this task
    assert other["task_id"] not in logs and "hello from another task" not in logs
    table = lab.airut("tasks", "--since", "1h").stdout
    assert task["task"][:27] in table and other["task_id"][:27] in table


def test_status_shows_daemons_queues_and_a_running_task_with_its_memory(lab, operated):
    marker = lab.scenario("status-sleep", [bash("sleep 8; echo slept"), say("{tool_result}")])
    task = lab.submit_no_wait(f"{marker} sleep", repo="demo")
    unit = lab.wait_for_unit(task)
    wait_until(lambda: lab.unit_properties(unit, "ActiveState")["ActiveState"] == "active",
               30, "the task unit to run")
    status = json.loads(lab.airut("status", "--json").stdout)
    daemons = {d["unit"]: d for d in status["daemons"]}
    for unit_name in ("airut-runner.service", "airut-proxy@0.service", "airut-proxy@1.service",
                      "airut-proxy-dns.service", VAULT_UNIT):
        assert daemons[unit_name]["state"] == "active", daemons
    running = {r["unit"]: r for r in status["running"]}
    assert running[unit]["task"] == task and running[unit]["memory"] > 1 << 20, running
    assert "incoming" in status["queues"] and "active" in status["queues"]
    assert unit in lab.airut("status").stdout
    assert lab.wait_reply(task)["outcome"] == "success"


def test_a_channel_whose_secret_is_gone_stops_with_the_key_and_the_reason(lab, operated):
    lab.guest("mv", f"{CREDENTIALS}/mail-vault", f"{CREDENTIALS}/.mail-vault.away")
    try:
        lab.guest("systemctl", "daemon-reload")  # the generator drops the credential line
        lab.guest("systemctl", "restart", VAULT_UNIT, check=False)
        wait_until(lambda: lab.unit_properties(VAULT_UNIT, "ExecMainStatus")
                   ["ExecMainStatus"] == "78", 30, "the channel to stop with status 78")
        journal = lab.journal("-u", VAULT_UNIT)
        assert ("repos.vault.email.imap.password: secret mail-vault cannot be read: systemd "
                "handed this process no credentials; /etc/airut/credentials/mail-vault: "
                "Permission denied") in journal
        refused = lab.airut("reload", check=False)  # not applied: the daemons would refuse
        assert refused.returncode != 0 and "secret mail-vault cannot be read" in refused.stderr
    finally:
        lab.guest("mv", f"{CREDENTIALS}/.mail-vault.away", f"{CREDENTIALS}/mail-vault")
        lab.airut("reload")
    wait_until(lambda: lab.guest("systemctl", "is-active", VAULT_UNIT, check=False)
               .stdout.strip() == "active", 30, "airut-email@vault to run again")
