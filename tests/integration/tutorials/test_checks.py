"""examples/tutorials/checks.py: DNSBL, SPF, mailbox lookup, aliases and a custom policy."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import pytest

from tests.integration.dns.server import dns_server  # noqa: F401 - a fixture

from .conftest import free_port, maildir_messages, wait_maildir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MAILBOXES = {
    "alice@example.com": {},
    "bob@example.com": {},
    "sales@example.com": {"alias": "bob@example.com"},
    "archive@example.com": {},
}


def test_checks(tutorial, dns_server, tmp_path: Path) -> None:  # noqa: F811
    dns_server.zone.update(
        {
            ("good.test", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
            ("forged.test", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
        }
    )
    table = tmp_path / "mailboxes.json"
    table.write_text(json.dumps(MAILBOXES))
    mail = tmp_path / "mail"
    port = free_port()
    tutorial(
        "checks.py",
        "--listen", f"127.0.0.1:{port}", "--mailboxes", str(table), "--dnsbl", "bl.test",
        "--archive", "archive@example.com", "--nameserver", "{}:{}".format(*dns_server.address),
        "--hostname", "mx.example.com", "--spool", str(tmp_path / "spool"), "--maildir", str(mail),
        ports=(port,),
    )  # fmt: skip

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        # SPF: this client may not send for forged.test.
        code, message = client.mail("someone@forged.test")
        assert (code, message[:6]) == (550, b"5.7.23"), message
        client.rset()
        # The mailbox table: unknown addresses are refused, aliases accepted.
        refused = client.sendmail(
            "someone@good.test",
            ["alice@example.com", "sales@example.com", "nobody@example.com"],
            b"Subject: offer\r\n\r\nA fine offer.\r\n",
        )
        assert refused == {"nobody@example.com": (550, b"5.1.1 No such mailbox")}
    for user in ("alice", "bob", "archive"):  # sales@ went to bob, the policy added archive@
        [message] = wait_maildir(mail, user, 1)
        assert b"A fine offer." in message
    assert maildir_messages(mail, "sales") == []
    assert any(name == "1.0.0.127.bl.test" for name, _, _ in dns_server.queries)  # asked, not listed

    # Now list 127.0.0.1: new connections are refused at the banner.
    dns_server.zone[("1.0.0.127.bl.test", "A")] = ["127.0.0.2"]
    with pytest.raises(smtplib.SMTPConnectError) as refused_banner:
        smtplib.SMTP("127.0.0.1", port, timeout=10)
    assert refused_banner.value.smtp_code == 554
