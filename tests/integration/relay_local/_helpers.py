"""Envelopes shared by the local delivery tests."""

from __future__ import annotations

from slimta.envelope import Envelope

HEADERS = b"From: sender@example.com\r\nSubject: test\r\nMessage-Id: <id.1@example.com>\r\n\r\n"


def make_envelope(
    sender: str = "sender@example.com",
    recipients: list[str] | None = None,
    body: bytes = b"Hello there.\r\n",
) -> Envelope:
    env = Envelope(sender, recipients if recipients is not None else ["rcpt@example.com"])
    env.parse(HEADERS + body)
    return env
