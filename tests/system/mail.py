"""Mail as the lab's MX delivers it: DKIM-signed (dkimpy) with the MX's
Authentication-Results on top; and finding airut's answer in a mailbox."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

MX = "mx.corp.test"


def new_dkim_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def signed(key: bytes, sender: str, subject: str, body: str, results: list[str] | None = None,
           domain: str = "corp.test", attachments: dict[str, bytes] | None = None,
           **headers: str) -> tuple[bytes, str]:
    """A DKIM-signed message with the MX's verdicts on top; returns it and its Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = headers.pop("to", "airut@corp.test")
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = message_id = make_msgid(domain=domain)
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    for name, data in (attachments or {}).items():
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    raw = bytes(msg)
    signature = dkim.sign(raw, b"lab", domain.encode(), key,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    if results is None:
        results = [f"{MX}; dkim=pass header.d={domain}; dmarc=pass (p=reject) "
                   f"header.from={domain}"]
    top = "".join(f"Authentication-Results: {r}\r\n" for r in results).encode()
    return top + signature + raw, message_id


def replies_to(messages, message_id: str) -> list:
    return [m for m in messages if message_id in str(m["In-Reply-To"] or "").split()]


def answer(lab, user: str, password: str, message_id: str, words: str):
    """airut's answer to a message in a lab user's mailbox (the reply that says `words`,
    not the acknowledgment), or None yet."""
    messages = [email.message_from_bytes(raw, policy=email.policy.default)
                for raw in lab.mailbox(user, password)]
    return next((m for m in replies_to(messages, message_id)
                 if words in m.get_body(("plain",)).get_content()), None)
