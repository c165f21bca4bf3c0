"""The two mail servers the email channel talks to: IMAP in, SMTP out."""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from email.message import EmailMessage

from imapclient import IMAPClient

from airut_core.config import ImapConfig, SmtpConfig

TIMEOUT = 60


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificates are always verified; ca_file adds an in-house CA to the system's."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


def _shutdown(client: IMAPClient) -> None:
    """Drop the connection. A failed TLS handshake has already taken its socket, and
    the error worth reporting is the one that got us here, not this one."""
    with contextlib.suppress(OSError):
        client.shutdown()


class Mailbox:
    """The repository's inbox, a work queue: every message in it is waiting."""

    def __init__(self, cfg: ImapConfig, timeout: float = TIMEOUT):
        self.cfg = cfg
        self.timeout = timeout
        self.client: IMAPClient | None = None

    def connect(self) -> None:
        cfg = self.cfg
        context = tls_context(cfg.ca_file)
        client = IMAPClient(cfg.host, port=cfg.port, ssl=cfg.security == "tls",
                            ssl_context=context, timeout=self.timeout)
        try:
            if cfg.security == "starttls":
                client.starttls(context)
            client.login(cfg.username, cfg.password)
            client.select_folder(cfg.mailbox)
        except Exception:
            _shutdown(client)
            raise
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.logout()
            except Exception:
                _shutdown(self.client)
            self.client = None

    def waiting(self) -> list[int]:
        return sorted(self.client.search(["NOT", "DELETED"]))

    def size(self, uid: int) -> int | None:
        """The message's size in bytes; None if it is gone."""
        data = self.client.fetch([uid], ["RFC822.SIZE"]).get(uid)
        return data.get(b"RFC822.SIZE") if data else None

    def fetch(self, uid: int) -> bytes | None:
        data = self.client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
        return data.get(b"BODY[]") if data else None

    def fetch_header(self, uid: int, limit: int = 65536) -> bytes | None:
        """At most `limit` bytes of the header: enough to name a message too big to read."""
        data = self.client.fetch([uid], [f"BODY.PEEK[HEADER]<0.{limit}>"]).get(uid)
        if not data:
            return None
        return next((v for k, v in data.items() if k.startswith(b"BODY[HEADER]")), b"")

    def remove(self, uid: int) -> None:
        """Only once the spool holds the message (design.md, spool rule 7)."""
        self.client.add_flags([uid], [b"\\Deleted"])
        if self.client.has_capability("UIDPLUS"):
            self.client.uid_expunge([uid])
        else:
            self.client.expunge()

    def quarantine(self, uid: int, folder: str) -> None:
        """Move the message into `folder` (made if missing), out of the work queue."""
        if not self.client.folder_exists(folder):
            self.client.create_folder(folder)
        if self.client.has_capability("MOVE"):
            self.client.move([uid], folder)
        else:
            self.client.copy([uid], folder)
            self.remove(uid)

    def wait(self, seconds: float) -> bool:
        """IDLE for up to `seconds`; True if the server announced something."""
        self.client.idle()
        try:
            responses = self.client.idle_check(timeout=seconds)
        finally:
            self.client.idle_done()
        return bool(responses)


def smtp_session(cfg: SmtpConfig, timeout: float = TIMEOUT) -> smtplib.SMTP:
    """A connection to the SMTP server, encrypted and logged in as configured."""
    context = tls_context(cfg.ca_file)
    if cfg.security == "tls":
        server: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=timeout,
                                                context=context)
    else:
        server = smtplib.SMTP(cfg.host, cfg.port, timeout=timeout)
    try:
        if cfg.security == "starttls":
            server.starttls(context=context)
        if cfg.username:
            server.login(cfg.username, cfg.password or "")
    except Exception:
        server.close()
        raise
    return server


def send(cfg: SmtpConfig, msg: EmailMessage) -> None:
    """Hand a message to the SMTP server; raises on any refusal."""
    with smtp_session(cfg) as server:
        refused = server.send_message(msg)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)
