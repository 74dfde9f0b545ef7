"""make_envelope builds parsed envelopes in one call."""

from __future__ import annotations

from slimta.envelope import Envelope
from slimta.testing import make_envelope


def test_defaults_give_a_complete_parsed_message():
    env = make_envelope()
    assert isinstance(env, Envelope)
    assert env.sender == "sender@example.com"
    assert env.recipients == ["rcpt@example.com"]
    assert env.headers is not None
    assert env.headers["From"] == "sender@example.com"
    assert env.headers["To"] == "rcpt@example.com"
    assert env.headers["Subject"] == "Test message"
    assert env.headers["Date"]
    assert env.message == b"Hello.\r\n"
    assert env.client["ip"] == "192.0.2.1"
    assert env.client["name"] == "client.example.test"
    assert env.receiver == "mx.example.test"
    assert env.timestamp is None


def test_message_ids_are_unique():
    assert make_envelope().headers["Message-Id"] != make_envelope().headers["Message-Id"]


def test_headers_given_are_used_exactly_and_body_str_is_utf8():
    env = make_envelope(
        "a@example.com",
        ["b@example.net", "c@example.org"],
        headers=[("Received", "one"), ("Received", "two"), ("Subject", "hi")],
        body="caf\u00e9\r\n",
        timestamp=12.5,
    )
    assert env.recipients == ["b@example.net", "c@example.org"]
    assert env.headers.get_all("Received") == ["one", "two"]
    assert env.headers["From"] is None
    assert env.message == "caf\u00e9\r\n".encode()
    assert env.timestamp == 12.5
    assert make_envelope(headers={"Subject": "x"}).headers.items() == [("Subject", "x")]


def test_a_single_recipient_string_and_the_null_sender():
    env = make_envelope("", "postmaster@example.com")
    assert env.recipients == ["postmaster@example.com"]
    assert env.sender == ""
    assert env.headers["From"] == "MAILER-DAEMON"


def test_round_trips_through_flatten():
    env = make_envelope(headers={"Subject": "x"}, body=b"line\r\n")
    header, body = env.flatten()
    assert header + body == b"Subject: x\r\n\r\nline\r\n"


def test_no_headers_at_all():
    env = make_envelope(headers={}, body=b"just a body\r\n")
    assert env.headers.items() == []
    assert env.message == b"just a body\r\n"
