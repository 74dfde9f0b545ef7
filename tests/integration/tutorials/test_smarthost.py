"""examples/tutorials/smarthost.py: StaticSmtpRelay with credentials over STARTTLS."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from .conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MESSAGE = b"Subject: disk almost full\r\n\r\n/var is at 91%.\r\n"


def start(tutorial, tls, tmp_path: Path, sink_port: int, *extra: str) -> int:
    port = free_port()
    tutorial(
        "smarthost.py",
        "--listen", f"127.0.0.1:{port}", "--smarthost", f"127.0.0.1:{sink_port}",
        "--ca-file", str(tls.ca_file), "--hostname", "relay.example.com",
        "--spool", str(tmp_path / "spool"), *extra,
        ports=(port,),
        env={"SMARTHOST_USER": "relay@example.com", "SMARTHOST_PASSWORD": "s3cret"},
    )  # fmt: skip
    return port


def test_relays_through_the_smarthost_with_auth(tutorial, sink_factory, tls, tmp_path: Path) -> None:
    upstream = sink_factory(context=tls.server_context, users={"relay@example.com": "s3cret"})
    port = start(tutorial, tls, tmp_path, upstream.port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("cron@host1.example.com", ["ops@example.org", "oncall@example.net"], MESSAGE)
    [envelope] = upstream.wait(1)
    # The upstream refuses mail before a login, and refuses a login before TLS.
    assert upstream.logins == ["relay@example.com"]
    assert envelope.sender == "cron@host1.example.com"
    assert sorted(envelope.recipients) == ["oncall@example.net", "ops@example.org"]
    assert b"/var is at 91%." in envelope.flatten()[1]


def test_untrusted_clients_cannot_relay(tutorial, sink_factory, tls, tmp_path: Path) -> None:
    upstream = sink_factory(context=tls.server_context, users={"relay@example.com": "s3cret"})
    # Replace the default trusted network by one the test client is not in.
    port = start(tutorial, tls, tmp_path, upstream.port, "--trusted", "192.0.2.0/24")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("cron@host1.example.com")
        assert client.rcpt("ops@example.org")[0] == 554
    assert upstream.envelopes == []
