"""Secrets the configuration names but does not hold: `password: !secret mail-demo`.

airut.yaml is read by every daemon, each under its own user, so it holds no secret
values. A `!secret NAME` stays a sealed reference (`Sealed`) when the file is loaded;
a daemon unseals only the secrets it needs (`config.load(..., unseal=...)`), and a
secret it cannot read is a configuration error at start, naming the key.

Where a secret is read, first found wins:
1. $CREDENTIALS_DIRECTORY/NAME: systemd handed it to this unit. The channel units get
   theirs this way (LoadCredential= or LoadCredentialEncrypted= lines that the
   generator writes for exactly the secrets of that repository's channel block).
2. /etc/airut/credentials/NAME: a plain file, root's only (0600); the runner and
   `airut check` run as root and read it here.
3. /etc/airut/credentials/NAME.cred: encrypted with
   `systemd-creds encrypt --name=NAME`; decrypted by `systemd-creds decrypt`.
One trailing newline is not part of the secret (`echo pw > file` makes one).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

CREDENTIALS_DIR = Path("/etc/airut/credentials")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_BYTES = 64 << 10


class SecretRef:
    """`!secret NAME` as the YAML loader found it."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"!secret {self.name}"


class Sealed:
    """A secret in a loaded configuration that this process has not read. Using it as
    a string is a bug: it raises instead of sending a placeholder as a password."""

    def __init__(self, name: str, key: str):
        self.name = name
        self.key = key  # where the configuration names it: repos.demo.email.imap.password

    def __repr__(self) -> str:
        return f"<secret {self.name} (sealed)>"

    def __str__(self) -> str:
        raise TypeError(f"{self.key}: secret {self.name} was not unsealed in this process")


class Unreadable(Exception):
    pass


def read(name: str, credentials_dir: Path = CREDENTIALS_DIR) -> str:
    """The secret's value; Unreadable says where it was looked for and why it failed."""
    if not NAME.match(name):
        raise Unreadable(f"{name!r} is not a valid secret name (letters, digits, _ . -)")
    tried = []
    unit_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    try:
        if unit_dir:
            return _text(Path(unit_dir, name).read_bytes())
        tried.append("systemd handed this process no credentials")
    except FileNotFoundError:
        tried.append(f"systemd handed this unit no credential {name}")
    except OSError as e:
        tried.append(f"{unit_dir}/{name}: {e.strerror}")
    plain, sealed = credentials_dir / name, credentials_dir / f"{name}.cred"
    try:
        return _text(plain.read_bytes())
    except FileNotFoundError:
        pass
    except OSError as e:  # not root: the unit was not handed it (`airut reload` does)
        raise Unreadable("; ".join([*tried, f"{plain}: {e.strerror}"])) from None
    try:
        sealed.stat()
    except OSError:
        raise Unreadable(f"neither {plain} nor {sealed} exists") from None
    return _decrypt(name, sealed)


def _text(data: bytes) -> str:
    if len(data) > MAX_BYTES:
        raise Unreadable(f"larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unreadable(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _decrypt(name: str, path: Path) -> str:
    try:
        out = subprocess.run(["systemd-creds", "decrypt", f"--name={name}", str(path), "-"],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unreadable(f"{path}: systemd-creds decrypt: {e}") from e
    if out.returncode != 0:
        detail = out.stderr.decode(errors="replace").strip().splitlines()
        raise Unreadable(f"{path}: systemd-creds decrypt failed: "
                         f"{detail[-1] if detail else out.returncode}")
    return _text(out.stdout)


def source(name: str, credentials_dir: Path = CREDENTIALS_DIR) -> tuple[str, Path] | None:
    """How systemd should hand the secret to a unit: ("LoadCredential", plain file) or
    ("LoadCredentialEncrypted", .cred file); None when neither file exists yet."""
    plain, sealed = credentials_dir / name, credentials_dir / f"{name}.cred"
    if plain.is_file():
        return "LoadCredential", plain
    if sealed.is_file():
        return "LoadCredentialEncrypted", sealed
    return None
