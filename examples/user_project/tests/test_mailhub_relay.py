"""The mailbox relay's per-recipient results, and the queue's retries of them."""

from __future__ import annotations

from mailhub.app import build_queue
from mailhub.relay import MailboxRelay

from slimta.queue.dict import DictStorage
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.testing import make_envelope


def test_each_recipient_gets_its_own_result():
    """Call the relay directly: one result per recipient."""
    relay = MailboxRelay(["ann@example.com", "bob@example.com"], quota=1)
    relay.mailboxes["bob@example.com"].append(b"old")
    results = relay.attempt(
        make_envelope(recipients=["ann@example.com", "bob@example.com", "x@example.com"]), 0
    )
    assert results["ann@example.com"] is None
    assert isinstance(results["bob@example.com"], TransientRelayError)
    assert results["bob@example.com"].reply.code == "452"
    assert isinstance(results["x@example.com"], PermanentRelayError)
    assert len(relay.mailboxes["ann@example.com"]) == 1


def test_a_full_mailbox_is_retried_every_ten_minutes(queue_clock):
    """The queue retries bob on our schedule; the clock skips the wait."""
    relay = MailboxRelay(["ann@example.com", "bob@example.com"], quota=1)
    relay.mailboxes["bob@example.com"].append(b"old")
    storage = DictStorage()
    queue = build_queue(storage, relay, {})
    queue.start()
    try:
        queue.enqueue(make_envelope(recipients=["ann@example.com", "bob@example.com"]))
        queue_clock.advance(0)
        assert len(relay.mailboxes["ann@example.com"]) == 1
        [(_, id_)] = storage.load()
        assert storage.get(id_)[0].recipients == ["bob@example.com"]  # ann is not sent twice
        relay.mailboxes["bob@example.com"].clear()  # bob reads his mail
        queue_clock.advance(599)
        assert relay.mailboxes["bob@example.com"] == []
        queue_clock.advance(1)
        assert len(relay.mailboxes["bob@example.com"]) == 1
        assert storage.get_info()["size"] == 0
    finally:
        queue.kill()


def test_scripted_outcomes_stand_in_for_the_relay(recording_relay):
    """When the relay is not what is under test, script what it answers."""
    recording_relay.script({"bob@example.com": TransientRelayError("busy")})
    queue = build_queue(DictStorage(), recording_relay, {})
    queue.start()
    try:
        queue.enqueue(make_envelope(recipients=["ann@example.com", "bob@example.com"]))
        recording_relay.wait_for(1)
        assert recording_relay.delivered == ["ann@example.com"]
    finally:
        queue.kill()
