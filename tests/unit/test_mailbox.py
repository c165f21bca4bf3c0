"""The IMAP client against a server whose TLS fails: the error that reaches the log and
`airut check` is the TLS one, not what closing the half-made connection says."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airut_core.config import ImapConfig
from airut_ingest.email.mailbox import Mailbox


def self_signed(tmp_path) -> ssl.SSLContext:
    """A server context whose certificate no client trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


@pytest.fixture
def starttls_server(tmp_path):
    """An IMAP server that offers STARTTLS, then presents an untrusted certificate."""
    context = self_signed(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"* OK IMAP4rev1 ready\r\n")
            reader = conn.makefile("rb")
            for line in reader:
                tag, command = line.split()[:2]
                if command.upper() == b"CAPABILITY":
                    conn.sendall(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n"
                                 + tag + b" OK done\r\n")
                elif command.upper() == b"STARTTLS":
                    conn.sendall(tag + b" OK begin TLS\r\n")
                    # The client refuses the certificate.
                    with contextlib.suppress(ssl.SSLError, OSError):
                        context.wrap_socket(conn, server_side=True).close()
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(5)


def test_a_refused_certificate_is_the_error_reported(starttls_server):
    cfg = ImapConfig(host="localhost", port=starttls_server, security="starttls",
                     username="u", password="p")
    with pytest.raises(ssl.SSLCertVerificationError):
        Mailbox(cfg, timeout=10).connect()
