"""examples/tutorials/submission.py: AUTH over STARTTLS and implicit TLS, MX relay."""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path

import pytest
from passlib.hash import pbkdf2_sha256

from .conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHi Bob.\r\n"


@pytest.fixture
def submission(tutorial, sink_factory, tls, tmp_path: Path):
    users = tmp_path / "users.txt"
    hashed = pbkdf2_sha256.using(rounds=1000).hash("alice-secret")
    users.write_text(f"# address:secret\nalice@example.com:{hashed}\ncarol@example.com:plain-secret\n")
    sink = sink_factory()
    starttls, implicit = free_port(), free_port()
    tutorial(
        "submission.py",
        "--starttls", f"127.0.0.1:{starttls}", "--implicit-tls", f"127.0.0.1:{implicit}",
        "--cert", str(tls.cert_file), "--key", str(tls.key_file), "--users", str(users),
        "--hostname", "submit.example.com", "--spool", str(tmp_path / "spool"),
        "--force-mx", f"example.net=127.0.0.1:{sink.port}",
        ports=(starttls, implicit),
    )  # fmt: skip
    return sink, starttls, implicit


def test_starttls_login_relays_by_mx(submission, tls) -> None:
    sink, starttls, _ = submission
    with smtplib.SMTP("127.0.0.1", starttls, timeout=10) as client:
        client.starttls(context=tls.client_context)
        client.login("alice@example.com", "alice-secret")
        client.sendmail("alice@example.com", ["bob@example.net"], MESSAGE)
    [envelope] = sink.wait(1)
    assert envelope.sender == "alice@example.com"
    assert envelope.recipients == ["bob@example.net"]
    header, body = envelope.flatten()
    assert b"Hi Bob." in body
    assert b"Message-Id:" in header or b"Message-ID:" in header  # added by the queue policy
    assert b"by submit.example.com" in header


def test_implicit_tls_login(submission, tls) -> None:
    sink, _, implicit = submission
    with smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=10, context=tls.client_context) as client:
        client.login("carol@example.com", "plain-secret")
        client.sendmail("carol@example.com", ["dave@example.net"], MESSAGE)
    [envelope] = sink.wait(1)
    assert envelope.recipients == ["dave@example.net"]


def test_refusals(submission, tls) -> None:
    sink, starttls, _ = submission
    with smtplib.SMTP("127.0.0.1", starttls, timeout=10) as client:
        client.ehlo("client.test")
        # No password before TLS (RFC 4954 538), and no mail without a login.
        assert client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGFsaWNlLXNlY3JldA==")[0] == 538
        assert client.mail("alice@example.com")[0] == 530
        client.rset()
        client.starttls(context=tls.client_context)
        client.login("alice@example.com", "alice-secret")
        assert client.mail("mallory@example.com")[0] == 553
    with smtplib.SMTP("127.0.0.1", starttls, timeout=10) as client:
        client.starttls(context=tls.client_context)
        client.ehlo("client.test")
        wrong = base64.b64encode(b"\0alice@example.com\0wrong").decode()
        assert client.docmd("AUTH", f"PLAIN {wrong}")[0] == 535
    assert sink.envelopes == []
