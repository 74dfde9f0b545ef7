"""RecordingSmtpPeer: relays deliver to a real in-process SMTP server."""

from __future__ import annotations

import time

import gevent
import pytest

from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.testing import HelperError, HelperTimeout, RecordingSmtpPeer, make_envelope


def _eventually(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.005)


def _relay(peer, **kwargs):
    return StaticSmtpRelay(
        "peer.example.test", 25, socket_creator=peer.socket_creator, ehlo_as="relay.test", **kwargs
    )


def test_a_relay_delivers_and_the_exact_bytes_are_kept(recording_smtp_peer):
    relay = _relay(recording_smtp_peer)
    try:
        env = make_envelope(headers={"Subject": "x"}, body=b".dot\r\nend\r\n")
        relay.attempt(env, 0)
    finally:
        relay.kill()
    [msg] = recording_smtp_peer.wait_for_messages(1)
    assert (msg.sender, msg.recipients, msg.ehlo_as, msg.encrypted) == (
        "sender@example.com",
        ["rcpt@example.com"],
        "relay.test",
        False,
    )
    assert msg.data == b"Subject: x\r\n\r\n.dot\r\nend\r\n"
    [conn] = recording_smtp_peer.connections
    assert conn.address == ("peer.example.test", 25)
    assert conn.received.startswith(b"EHLO relay.test\r\n")
    assert b"RCPT TO:<rcpt@example.com>\r\n" in recording_smtp_peer.received
    assert conn.sent.startswith(b"220 peer.example.test ")


def test_per_recipient_refusals(recording_smtp_peer):
    recording_smtp_peer.set_reply("RCPT", "550", "5.1.1 No such user", address="bad@example.com")
    recording_smtp_peer.set_reply("RCPT", "451", "4.3.0 Try later", address="later@example.com", times=1)
    relay = _relay(recording_smtp_peer)
    try:
        result = relay.attempt(
            make_envelope(recipients=["ok@example.com", "bad@example.com", "later@example.com"]), 0
        )
        assert isinstance(result["bad@example.com"], PermanentRelayError)
        assert isinstance(result["later@example.com"], TransientRelayError)
        assert result["ok@example.com"].code == "250"
        relay.attempt(make_envelope(recipients=["later@example.com"]), 1)
    finally:
        relay.kill()
    messages = recording_smtp_peer.wait_for_messages(2)
    assert [m.recipients for m in messages] == [["ok@example.com"], ["later@example.com"]]


def test_whole_message_refused_after_data(recording_smtp_peer):
    recording_smtp_peer.set_reply("HAVE_DATA", "554", "5.7.1 Spam")
    relay = _relay(recording_smtp_peer)
    try:
        with pytest.raises(PermanentRelayError, match=r"5\.7\.1 Spam"):
            relay.attempt(make_envelope(), 0)
    finally:
        relay.kill()
    assert recording_smtp_peer.messages == []


def test_refused_connections_are_transient_failures(recording_smtp_peer):
    recording_smtp_peer.refuse_connections = True
    relay = _relay(recording_smtp_peer)
    try:
        with pytest.raises(TransientRelayError, match="refused"):
            relay.attempt(make_envelope(), 0)
    finally:
        relay.kill()


def test_tls_and_auth():
    with RecordingSmtpPeer(tls=True, credentials={"relayuser": "pw"}) as peer:
        relay = _relay(peer, credentials=("relayuser", "pw"))
        try:
            relay.attempt(make_envelope(), 0)
        finally:
            relay.kill()
        [msg] = peer.wait_for_messages(1)
        assert msg.encrypted
        assert msg.auth == "relayuser"
        assert b"AUTH PLAIN" in peer.received  # plaintext after decryption
        assert peer.connections[0].encrypted


def test_misuse_and_timeouts(recording_smtp_peer):
    with pytest.raises(HelperError, match="cannot script a reply to 'QUIT'"):
        recording_smtp_peer.set_reply("QUIT", "500", "no")
    with pytest.raises(HelperTimeout, match=r"1 message\(s\), the peer accepted 0 over 0 connection"):
        recording_smtp_peer.wait_for_messages(1, timeout=0.05)
    recording_smtp_peer.close()
    with pytest.raises(ConnectionRefusedError, match="peer was closed"):
        recording_smtp_peer.socket_creator(("x", 25))


def test_queue_retries_into_the_peer(queue_clock, recording_smtp_peer):
    recording_smtp_peer.set_reply("MAIL", "451", "4.3.2 Busy", times=1)
    relay = _relay(recording_smtp_peer)
    queue = Queue(DictStorage(), relay, backoff=lambda env, attempts: 600.0)
    queue.start()
    try:
        queue.enqueue(make_envelope())
        # The first attempt is refused (451); the queue then asks the clock
        # to wake it 600 s later.
        _eventually(lambda: queue_clock.waiting)
        assert queue_clock.waiting == [queue_clock.time() + 600.0]
        assert recording_smtp_peer.messages == []
        queue_clock.advance(600)
        recording_smtp_peer.wait_for_messages(1)
    finally:
        queue.kill()
        relay.kill()
