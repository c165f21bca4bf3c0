"""One lab guest for the whole system-test session, torn down at the end."""

import os

import pytest

from tests.slackfake import APP_TOKEN, BOT_TOKEN
from tests.system.lab import Lab, base_config

SLACK_PORT = 8097
SLACK_HOST = f"127.0.0.1:{SLACK_PORT}"

SLACK = {"bot_token": BOT_TOKEN, "app_token": APP_TOKEN,
         "authorized": [{"workspace_members": True}],
         "api_url": f"http://{SLACK_HOST}/api/", "file_hosts": [SLACK_HOST],
         "retry_delay": 0.5}
LIMITED = {"resource_limits": {"memory": "320M", "timeout": 10, "cpus": 1.0, "pids_limit": 256}}


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.fail("system tests boot a systemd-nspawn guest and need root")
    lab = Lab()
    lab.up(base_config(
        demo={}, small=LIMITED, broken={"repo_url": "/srv/git/missing.git"},
        cpu={"resource_limits": {"cpus": 0.5}},
        bomb={"resource_limits": {"pids_limit": 128, "timeout": 30}},
        imaged={"repo_url": "/srv/git/imaged.git"},
        disk={"resource_limits": {"disk": "64M", "timeout": 120}},
        nested={"allow_user_namespaces": True},
        # Credentials in the URL (served over plain HTTP in the guest by the test).
        private={"repo_url": "http://airut:TOKEN-SECRET@127.0.0.1:8099/demo.git"},
        # Break-glass: no proxy; the agent talks to the demo model's plain port directly.
        mail={"email": {
            "address": "airut@corp.test", "trusted_authserv_id": "mx.corp.test",
            "authorized_senders": ["alice@corp.test", "carol@corp.test", "*@partner.test"],
            "max_message_bytes": "1M",
            # STARTTLS and authentication both ways, against the lab CA.
            "imap": {"host": "mx.corp.test", "port": 143, "security": "starttls",
                     "username": "airut@corp.test", "password": "airut-pass",
                     "poll_interval": 5, "ca_file": "/etc/airut/lab-tls/ca.pem"},
            "smtp": {"host": "mx.corp.test", "port": 587, "security": "starttls",
                     "username": "airut@corp.test", "password": "airut-pass",
                     "ca_file": "/etc/airut/lab-tls/ca.pem"},
            "retry_delay": 1},
            # Started by hand in the tests (systemctl start): the calendar is far away.
            "schedules": {"digest": {
                "on_calendar": "2099-01-01", "prompt": "[[scenario:sched-digest]] digest",
                "deliver": {"channel": "email", "to": "alice@corp.test"}},
                # Script mode: trigger.sh comes from the default branch (test_schedule).
                "probe": {
                    "on_calendar": "2099-01-01", "trigger_command": "sh trigger.sh",
                    "trigger_timeout": 5, "output_limit": 4096,
                    "deliver": {"channel": "email", "to": "alice@corp.test"}}}},
        # The Slack app (tests/slackfake.py, listening on the guest's loopback).
        chat={"slack": SLACK, "schedules": {"report": {
            "cron": "0 7 1 1 *", "prompt": "[[scenario:sched-report]] report",
            "deliver": {"channel": "slack", "to": "C0REPORTS"}}}},
        open={"network": {"sandbox": False}, "masked_secrets": {},
              "secrets": {"ANTHROPIC_API_KEY": "sk-ant-plain-open-key"},
              "api_base_url": "http://host.containers.internal:8765"}))
    yield lab
    if not os.environ.get("AIRUT_LAB_KEEP"):  # set it to look around after a failure
        lab.down()
