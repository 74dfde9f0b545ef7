"""examples/tutorials/inbound_mx.py: SMTP -> disk queue -> Maildir."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from .conftest import free_port, maildir_messages, wait_maildir, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_delivers_local_mail_and_refuses_relaying(tutorial, tmp_path: Path) -> None:
    port = free_port()
    spool, mail = tmp_path / "spool", tmp_path / "mail"
    tutorial(
        "inbound_mx.py",
        "--listen", f"127.0.0.1:{port}", "--domain", "example.com", "--hostname", "mx.example.com",
        "--spool", str(spool), "--maildir", str(mail),
        ports=(port,),
    )  # fmt: skip
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        message = b"Subject: hi\r\n\r\nHello Alice.\r\n"
        refused = client.sendmail("bob@sender.test", ["alice@example.com", "eve@elsewhere.test"], message)
        assert set(refused) == {"eve@elsewhere.test"}
        assert refused["eve@elsewhere.test"][0] == 554
    [message] = wait_maildir(mail, "alice", 1)
    assert b"Hello Alice." in message
    assert b"Delivered-To: <alice@example.com>" in message
    assert b"by mx.example.com" in message  # the Received header the policy added
    assert maildir_messages(mail, "eve") == []
    # Delivered mail leaves the spool.
    wait_until(lambda: not list((spool / "envelopes").glob("*.env")), 5, "an empty spool")
