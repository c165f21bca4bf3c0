"""The operator's side in the lab guest: secrets as credentials, channels that follow the
configuration (airut-generator, `airut reload`), and `airut check|status|tasks|logs`.

The module adds a repository "vault" whose mail password and model key are named with
`!secret` and live in /etc/airut/credentials; its mailbox is bob@corp.test.
"""

from __future__ import annotations

import email
import email.policy
import json
import re

import pytest
import yaml

from tests.system.lab import REAL_API_KEY, bash, say, wait_until
from tests.system.test_email import dkim_key, signed  # noqa: F401 (a fixture)

VAULT_KEY = "sk-ant-api03-VAULT-key-from-a-credential-0123456789"
CREDENTIALS = "/etc/airut/credentials"
VAULT_UNIT = "airut-email@vault.service"
CAROL = ("carol@corp.test", "carol-pass")


def vault(mail_secret: str = "mail-vault", imap_port: int = 143) -> dict:
    tls = "/etc/airut/lab-tls/ca.pem"
    return {
        "repo_url": "/srv/git/demo.git",
        "masked_secrets": {"ANTHROPIC_API_KEY": {
            "value": "SECRET:vault-api-key", "scopes": ["api.anthropic.com"],
            "headers": ["x-api-key"]}},
        "email": {
            "address": "bob@corp.test", "trusted_authserv_id": "mx.corp.test",
            "authorized_senders": ["carol@corp.test"],
            "imap": {"host": "mx.corp.test", "port": imap_port, "security": "starttls",
                     "username": "bob@corp.test", "password": f"SECRET:{mail_secret}",
                     "poll_interval": 5, "ca_file": tls},
            "smtp": {"host": "mx.corp.test", "port": 587, "security": "starttls",
                     "username": "bob@corp.test", "password": f"SECRET:{mail_secret}",
                     "ca_file": tls}}}


def dump(config: dict) -> str:
    """YAML with `!secret NAME` where the dict says "SECRET:NAME"."""
    return re.sub(r"'?SECRET:([A-Za-z0-9_.-]+)'?", r"!secret \1", yaml.safe_dump(config))


def guest_write(lab, path: str, text: str, mode: str = "600") -> None:
    lab.guest("install", "-D", f"-m{mode}", "/dev/stdin", path, input=text)


def airut(lab, *args: str, check: bool = True):
    return lab.guest("airut", *args, check=check, timeout=180)


@pytest.fixture(scope="module")
def operated(lab):
    """The lab's configuration plus "vault", applied with `airut reload`; put back after."""
    original = (lab.root / "etc/airut/airut.yaml").read_text()
    config = yaml.safe_load(original)
    config["repos"]["vault"] = vault()
    guest_write(lab, f"{CREDENTIALS}/mail-vault", "bob-pass\n")
    guest_write(lab, f"{CREDENTIALS}/vault-api-key", VAULT_KEY + "\n")
    guest_write(lab, "/etc/airut/airut.yaml", dump(config), mode="644")
    # As on a server: airut.target runs (`airut reload` starts new channels only then).
    lab.guest("systemctl", "start", "airut.target")
    out = airut(lab, "reload")
    yield out.stdout
    guest_write(lab, "/etc/airut/airut.yaml", original, mode="644")
    gone = airut(lab, "reload").stdout
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


def test_a_mail_is_answered_with_secrets_from_credentials(lab, operated, dkim_key):  # noqa: F811
    marker = lab.scenario("vault-blocked", [bash("curl -s -o /dev/null -w '%{http_code}' "
                                                 "https://other.test/vault-probe"),
                                            say("probe said {tool_result}")])
    raw, message_id = signed(dkim_key, "carol@corp.test", "Vault", f"{marker} go",
                             to="bob@corp.test")
    lab.send_mail(raw, "carol@corp.test", "bob@corp.test")
    reply = wait_until(lambda: _reply_to(lab, message_id, "probe said"), 120,
                       "the answer from bob@")  # after the acknowledgment
    assert "probe said 403" in reply
    keys = {r["headers"].get("x-api-key") for r in lab.model_requests()
            if "vault-probe" in json.dumps(r["body"])}
    assert keys == {VAULT_KEY}  # the runner unsealed it; the proxy swapped it in
    assert REAL_API_KEY not in keys


def _reply_to(lab, message_id: str, words: str) -> str | None:
    for raw in lab.mailbox(*CAROL):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        text = msg.get_body(("plain",)).get_content()
        if message_id in (msg.get("In-Reply-To") or "") and words in text:
            return text
    return None


def _vault_task(lab) -> dict:
    found = json.loads(airut(lab, "tasks", "--repo", "vault", "--json").stdout)
    assert found, "no task of vault"
    return found[0]


def test_tasks_lists_the_mail_task_and_logs_tells_its_whole_story(lab, operated):
    task = _vault_task(lab)
    assert task["sender"] == "carol@corp.test" and task["outcome"] == "success", task
    assert task["repo"] == "vault" and task["duration_s"] and task["unit"]
    other = lab.submit("hello from another task", repo="demo")
    logs = airut(lab, "logs", task["task"]).stdout
    # The channel, the runner, the proxy, and the task unit: systemd's lines about it and
    # what runs in it (podman's own events; the agent's stderr, were there any).
    for source in ("airut-email@vault", "airut-runner", "airut-proxy", "podman"):
        assert re.search(rf" {re.escape(source)}\[\d+\]: ", logs), (source, logs)
    assert f"systemd[1]: Started {task['unit']}" in logs
    assert f"{task['unit']}: Deactivated successfully" in logs
    assert "BLOCKED" in logs and "other.test" in logs  # the proxy's line for this task
    assert other["task_id"] not in logs and "hello from another task" not in logs
    table = airut(lab, "tasks", "--since", "1h").stdout
    assert task["task"][:27] in table and other["task_id"][:27] in table


def test_status_shows_daemons_queues_and_a_running_task_with_its_memory(lab, operated):
    marker = lab.scenario("status-sleep", [bash("sleep 8; echo slept"), say("{tool_result}")])
    task = lab.submit_no_wait(f"{marker} sleep", repo="demo")
    unit = lab.wait_for_unit(task)
    wait_until(lambda: lab.unit_properties(unit, "ActiveState")["ActiveState"] == "active",
               30, "the task unit to run")
    status = json.loads(airut(lab, "status", "--json").stdout)
    daemons = {d["unit"]: d for d in status["daemons"]}
    for unit_name in ("airut-runner.service", "airut-proxy.service", VAULT_UNIT):
        assert daemons[unit_name]["state"] == "active", daemons
    running = {r["unit"]: r for r in status["running"]}
    assert running[unit]["task"] == task and running[unit]["memory"] > 1 << 20, running
    assert "incoming" in status["queues"] and "active" in status["queues"]
    assert unit in airut(lab, "status").stdout
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
        refused = airut(lab, "reload", check=False)  # not applied: the daemons would refuse
        assert refused.returncode != 0 and "secret mail-vault cannot be read" in refused.stderr
    finally:
        lab.guest("mv", f"{CREDENTIALS}/.mail-vault.away", f"{CREDENTIALS}/mail-vault")
        airut(lab, "reload")
    wait_until(lambda: lab.guest("systemctl", "is-active", VAULT_UNIT, check=False)
               .stdout.strip() == "active", 30, "airut-email@vault to run again")


CHECK = "/etc/airut/check.yaml"


@pytest.mark.parametrize(("text", "line"), [
    ("repos: [", r"FAIL  configuration: /etc/airut/check.yaml: not valid YAML"),
    ("repos: {}\nexecution: {max_concurent: 2}\n",
     r"FAIL  configuration: .*execution: unknown key max_concurent"),
    (dump({"repos": {"vault": vault(mail_secret="no-such-secret")}}),
     r"FAIL  secret no-such-secret: neither /etc/airut/credentials/no-such-secret nor "),
    (dump({"agent": {"claude_binary": "/var/cache/airut/claude/0.0.1/claude"},
           "repos": {"vault": vault()}}),
     r"FAIL  Claude Code CLI: .*0.0.1/claude is missing; run: airut setup claude"),
    (dump({"repos": {"vault": vault(imap_port=1)}}),
     r"FAIL  email vault: IMAP mx.corp.test: mx.corp.test:1 .*(Refused|refused)"),
])
def test_check_fails_with_the_right_line(lab, operated, text, line):
    guest_write(lab, CHECK, text, mode="644")
    out = airut(lab, "--config", CHECK, "check", check=False)
    assert out.returncode == 1, out.stdout
    assert re.search(line, out.stdout), out.stdout
    failed = [x for x in out.stdout.splitlines() if x.startswith("FAIL")]
    assert len(failed) == 1, out.stdout  # that line, and no other


def test_check_passes_on_a_good_configuration(lab, operated):
    proxy = {"proxy": {"allowed_private_networks": ["127.0.0.1/32"]}}
    guest_write(lab, CHECK, dump({**proxy, "repos": {"vault": vault()}}), mode="644")
    out = airut(lab, "check", "--config", CHECK, check=False)
    assert out.returncode == 0, out.stdout
    for name in ("configuration", "secret mail-vault", "secret vault-api-key", "podman",
                 "cgroups", "nftables", "Claude Code CLI", "proxy CA", "repository vault",
                 "email vault: IMAP", "email vault: SMTP"):
        assert re.search(rf"^ok    {re.escape(name)}", out.stdout, re.M), (name, out.stdout)
    assert "allowlist parses" in out.stdout
