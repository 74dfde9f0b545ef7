"""The alias policy, alone and behind the SMTP edge and a real queue."""

from __future__ import annotations

from mailhub.app import build_queue
from mailhub.policy import AliasPolicy

from slimta.queue.dict import DictStorage
from slimta.testing import make_envelope

ALIASES = {"sales@example.com": ["ann@example.com", "bob@example.com"]}


def test_aliases_expand_without_duplicates():
    """The policy alone, on an envelope made with make_envelope."""
    envelope = make_envelope(recipients=["Sales@example.com", "ann@example.com", "carl@example.com"])
    AliasPolicy(ALIASES).apply(envelope)
    assert envelope.recipients == ["ann@example.com", "bob@example.com", "carl@example.com"]


def test_mail_to_an_alias_is_delivered_to_its_targets(smtp_conversation, recording_relay):
    """SMTP in, the policy in the queue, a recording relay out."""
    queue = build_queue(DictStorage(), recording_relay, ALIASES)
    queue.start()
    try:
        conv = smtp_conversation(queue=queue)
        conv.ehlo()
        conv.mail("customer@example.net")
        conv.rcpt("sales@example.com")
        assert conv.data(b"Subject: order\r\n\r\nOne please.\r\n").code == "250"
        [attempt] = recording_relay.wait_for(1)
        assert attempt.recipients == ("ann@example.com", "bob@example.com")
    finally:
        queue.kill()
