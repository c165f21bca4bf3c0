"""Secrets named in the configuration: sealed on load, unsealed only where asked, and
the generator's units that hand a repository's mail password to its unit only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airut_cli import generator
from airut_core import config as config_mod
from airut_core import secrets
from airut_core.config import ConfigError
from airut_core.secrets import Sealed

pytestmark = pytest.mark.unit

CONFIG = """
proxy:
  workers: 1
repos:
  alpha:
    repo_url: /srv/git/alpha.git
    secrets: {CI_TOKEN: !secret ci-token}
    masked_secrets:
      ANTHROPIC_API_KEY: {value: !secret api-key, scopes: [api.anthropic.com]}
    email:
      address: a@corp.test
      trusted_authserv_id: mx.corp.test
      authorized_senders: ["*@corp.test"]
      imap: {host: mx.corp.test, username: a@corp.test, password: !secret mail-alpha}
      smtp: {host: mx.corp.test, username: a@corp.test, password: !secret mail-alpha}
  beta:
    repo_url: /srv/git/beta.git
    email:
      address: b@corp.test
      trusted_authserv_id: mx.corp.test
      authorized_senders: ["*@corp.test"]
      imap: {host: mx.corp.test, username: b@corp.test, password: !secret mail-beta}
      smtp: {host: mx.corp.test}
  gamma:
    repo_url: /srv/git/gamma.git
"""


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    d = tmp_path / "credentials"
    d.mkdir()
    (d / "mail-alpha").write_text("alpha-pass\n")
    (d / "api-key").write_text("sk-real")
    (d / "ci-token").write_text("tok\r\n")
    return d


def test_secrets_stay_sealed_until_a_process_unseals_its_own(creds: Path) -> None:
    cfg = config_mod.parse(CONFIG, "airut.yaml")
    imap = cfg.repos["alpha"].email.imap
    assert isinstance(imap.password, Sealed)
    with pytest.raises(TypeError, match="was not unsealed"):
        str(imap.password)  # never a placeholder sent as a password

    config_mod.unseal_secrets(cfg, config_mod.email_secrets("alpha"), creds)
    assert imap.password == "alpha-pass" == cfg.repos["alpha"].email.smtp.password
    # The email daemon of alpha holds nothing else: not the model key, not beta's.
    assert isinstance(cfg.repos["alpha"].masked_secrets["ANTHROPIC_API_KEY"].value, Sealed)
    assert isinstance(cfg.repos["alpha"].secrets["CI_TOKEN"], Sealed)
    assert isinstance(cfg.repos["beta"].email.imap.password, Sealed)


def test_the_runner_unseals_what_tasks_and_the_proxy_get_and_no_mail_password(
        creds: Path) -> None:
    cfg = config_mod.parse(CONFIG, "airut.yaml")
    config_mod.unseal_secrets(cfg, config_mod.task_secrets, creds)
    alpha = cfg.repos["alpha"]
    assert alpha.masked_secrets["ANTHROPIC_API_KEY"].value == "sk-real"
    assert alpha.secrets["CI_TOKEN"] == "tok"
    assert isinstance(alpha.email.imap.password, Sealed)


def test_a_secret_that_cannot_be_read_is_an_error_naming_the_key_and_why(
        creds: Path) -> None:
    cfg = config_mod.parse(CONFIG, "airut.yaml")
    with pytest.raises(ConfigError) as e:
        config_mod.unseal_secrets(cfg, config_mod.email_secrets("beta"), creds)
    assert str(e.value) == (
        f"airut.yaml: repos.beta.email.imap.password: secret mail-beta cannot be read: "
        f"neither {creds}/mail-beta nor {creds}/mail-beta.cred exists")


def test_a_unit_reads_the_credential_systemd_handed_it_first(
        creds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unit_dir = tmp_path / "run-credentials"
    unit_dir.mkdir()
    (unit_dir / "mail-beta").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(unit_dir))
    assert secrets.read("mail-beta", creds) == "from-systemd"
    with pytest.raises(secrets.Unreadable, match=f"neither {creds}/other nor"):
        secrets.read("other", creds)


@pytest.mark.parametrize(("text", "message"), [
    ("repos: {a: {repo_url: !secret url}}",
     "repos.a.repo_url: !secret url: a secret can be named only where a password"),
    ("repos: {a: {repo_url: x, secrets: {K: !secret ../../etc/shadow}}}",
     "repos.a.secrets.K: !secret ../../etc/shadow: a secret's name is letters"),
])
def test_a_secret_named_in_the_wrong_place_or_as_a_path_is_refused(text: str,
                                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("!", ".").replace("(", ".")):
        config_mod.parse(text, "airut.yaml")


def test_secret_files_are_text_of_bounded_size(creds: Path) -> None:
    (creds / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(secrets.Unreadable, match="not UTF-8"):
        secrets.read("binary", creds)
    (creds / "huge").write_bytes(b"x" * (secrets.MAX_BYTES + 1))
    with pytest.raises(secrets.Unreadable, match="larger than"):
        secrets.read("huge", creds)


def test_the_generator_makes_one_instance_per_email_block_with_only_its_secrets(
        creds: Path, tmp_path: Path) -> None:
    (creds / "mail-beta.cred").write_bytes(b"encrypted")
    cfg = config_mod.parse(CONFIG, "airut.yaml")
    out = tmp_path / "generator"
    template = Path("/usr/lib/systemd/system/airut-email@.service")
    made = generator.generate(cfg, out, template.parent, creds)
    assert made == ["airut-email@alpha.service", "airut-email@beta.service"]
    wants = out / "airut.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == made  # gamma has no email block
    assert os.readlink(wants / "airut-email@alpha.service") == str(template)
    alpha = (out / "airut-email@alpha.service.d/50-credentials.conf").read_text()
    assert alpha.splitlines()[1:] == ["[Service]",
                                      f"LoadCredential=mail-alpha:{creds}/mail-alpha"]
    beta = (out / "airut-email@beta.service.d/50-credentials.conf").read_text()
    assert f"LoadCredentialEncrypted=mail-beta:{creds}/mail-beta.cred" in beta
    assert "api-key" not in alpha + beta and "ci-token" not in alpha + beta


def test_the_generator_makes_a_slack_instance_with_only_the_slack_tokens(
        creds: Path, tmp_path: Path) -> None:
    (creds / "slack-bot").write_text("xoxb-1")
    (creds / "slack-app").write_text("xapp-1")
    text = CONFIG.replace("  gamma:\n    repo_url: /srv/git/gamma.git\n", (
        "  gamma:\n    repo_url: /srv/git/gamma.git\n    slack:\n"
        "      bot_token: !secret slack-bot\n      app_token: !secret slack-app\n"
        "      authorized: [{workspace_members: true}]\n"))
    cfg = config_mod.parse(text, "airut.yaml")
    out = tmp_path / "generator"
    made = generator.generate(cfg, out, Path("/usr/lib/systemd/system"), creds)
    assert made == ["airut-email@alpha.service", "airut-email@beta.service",
                    "airut-slack@gamma.service"]
    link = out / "airut.target.wants/airut-slack@gamma.service"
    assert os.readlink(link) == "/usr/lib/systemd/system/airut-slack@.service"
    conf = (out / "airut-slack@gamma.service.d/50-credentials.conf").read_text()
    assert conf.splitlines()[2:] == [f"LoadCredential=slack-app:{creds}/slack-app",
                                     f"LoadCredential=slack-bot:{creds}/slack-bot"]


def test_the_generator_leaves_out_a_missing_secret_for_the_daemon_to_name(
        creds: Path, tmp_path: Path) -> None:
    cfg = config_mod.parse(CONFIG, "airut.yaml")
    out = tmp_path / "generator"
    generator.generate(cfg, out, Path("/x"), creds)
    assert (out / "airut.target.wants/airut-email@beta.service").is_symlink()
    assert not (out / "airut-email@beta.service.d").exists()


def test_the_generator_wants_the_proxy_workers_and_tells_the_firewall(tmp_path: Path) -> None:
    cfg = config_mod.parse(CONFIG.replace("workers: 1", "workers: 3"), "airut.yaml")
    out = tmp_path / "generator"
    made = generator.generate(cfg, out, Path("/usr/lib/systemd/system"))
    assert made[-2:] == ["airut-proxy@1.service", "airut-proxy@2.service"]  # 0: the target
    assert os.readlink(out / "airut.target.wants/airut-proxy@2.service") == \
        "/usr/lib/systemd/system/airut-proxy@.service"
    conf = (out / "airut-firewall.service.d/50-workers.conf").read_text()
    assert "Environment=AIRUT_PROXY_WORKERS=3\n" in conf


def test_a_broken_configuration_makes_no_units_and_does_not_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "airut.yaml"
    path.write_text("repos: [")
    monkeypatch.setenv("AIRUT_CONFIG", str(path))
    out = tmp_path / "generator"
    generator.main([str(out)])
    assert not out.exists()
    assert "airut-generator: no channel units:" in capsys.readouterr().err
