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


def test_failed_delivery_stays_queued_and_is_listed(tutorial, tmp_path: Path) -> None:
    port = free_port()
    spool, mail = tmp_path / "spool", tmp_path / "not-a-directory"
    mail.write_text("a file where the Maildirs should be: every delivery fails temporarily\n")
    node = tutorial(
        "inbound_mx.py",
        "--listen", f"127.0.0.1:{port}", "--domain", "example.com",
        "--spool", str(spool), "--maildir", str(mail),
        ports=(port,),
    )  # fmt: skip
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("bob@sender.test", ["alice@example.com"], b"Subject: hi\r\n\r\nHello.\r\n")
    wait_until(lambda: "450" in node.log() or list((spool / "meta").glob("*")), 10, "a failed attempt")
    assert node.stop() == 0
    # The message survived the stop; the operations script lists it.
    report = tutorial("queue_report.py", "--spool", str(spool))
    wait_until(lambda: report.proc.poll() is not None, 10, "the report")
    assert report.proc.returncode == 0, report.log()
    out = report.log()
    assert "from: bob@sender.test" in out
    assert "to:   alice@example.com" in out
    assert "attempts=1" in out
    assert "-- 1 message(s)" in out
