"""Lookups feeding SmtpValidators on a real SmtpEdge: valid recipients from SQLite."""

from __future__ import annotations

import contextlib
import smtplib
import sqlite3

import gevent
import pytest

from slimta.edge.smtp import SmtpEdge, SmtpValidators
from slimta.lookup import LookupBackendError
from slimta.lookup.drivers.dbapi2 import SQLite3Lookup
from slimta.lookup.drivers.regex import RegexLookup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]


class Queue:
    def __init__(self):
        self.envelopes = []

    def enqueue(self, envelope):
        self.envelopes.append(envelope)
        return [(envelope, str(len(self.envelopes)))]


@pytest.fixture
def mailboxes(tmp_path):
    path = str(tmp_path / "mailboxes.db")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE mailboxes (address TEXT PRIMARY KEY)")
        conn.executemany("INSERT INTO mailboxes VALUES (?)", [("alice@example.com",), ("bob@example.com",)])
        conn.commit()
    lookup = SQLite3Lookup(path, "SELECT address FROM mailboxes WHERE address = lower(:address)")
    yield lookup
    lookup.close()


def test_rcpt_checked_against_sqlite_and_regex(mailboxes):
    blocked_senders = RegexLookup("{address}")
    blocked_senders.add_regex(r".*@spam\.test$", {"reason": "listed"})

    class Validators(SmtpValidators):
        def handle_mail(self, reply, sender, params):
            if blocked_senders.lookup_address(sender):
                reply.code, reply.message = "550", "5.7.1 Sender blocked"

        def handle_rcpt(self, reply, recipient, params):
            try:
                found = mailboxes.lookup_address(recipient)
            except LookupBackendError:
                reply.code, reply.message = "451", "4.3.0 Try again later"
                return
            if found is None:
                reply.code, reply.message = "550", "5.1.1 No such mailbox"

    queue = Queue()
    edge = SmtpEdge(("127.0.0.1", 0), queue, validator_class=Validators, hostname="mx.test")
    edge.start()
    gevent.sleep(0)
    try:
        with smtplib.SMTP("127.0.0.1", edge.server.address[1], timeout=5) as client:
            client.ehlo("c.test")
            assert client.mail("x@spam.test")[0] == 550
            client.rset()
            assert client.mail("x@src.test")[0] == 250
            assert client.rcpt("Alice@example.com")[0] == 250
            code, message = client.rcpt("carol@example.com")
            assert (code, message) == (550, b"5.1.1 No such mailbox")
            assert client.rcpt("bob@example.com")[0] == 250
            client.data(b"Subject: t\r\n\r\nbody\r\n")
    finally:
        edge.kill(block=True, timeout=2)
    (env,) = queue.envelopes
    assert env.recipients == ["Alice@example.com", "bob@example.com"]
