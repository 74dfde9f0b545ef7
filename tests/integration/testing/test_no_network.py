"""The helpers never open a network port: audited during a full workout of each one."""

from __future__ import annotations

import socket
import sys

import pytest

from slimta.edge.smtp import SmtpValidators
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.testing import QueueClock, RecordingRelay, RecordingSmtpPeer, SmtpConversation, make_envelope

_INET = (socket.AF_INET, socket.AF_INET6)
_events: list[tuple[str, tuple[object, ...]]] = []
_recording = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    # Audit hooks cannot be removed, so this one only records while a test
    # asks it to.  socket.__new__ reports the family of every socket made
    # (C level, so gevent's sockets are seen too); bind and connect their
    # address.
    if not _recording:
        return
    made_inet = event == "socket.__new__" and args[1] in _INET
    used_address = event in ("socket.bind", "socket.connect") and isinstance(args[1], tuple)
    if made_inet or used_address:
        _events.append((event, args[1:]))


sys.addaudithook(_audit)


@pytest.fixture
def audited():
    global _recording
    _events.clear()
    _recording = True
    yield _events
    _recording = False


class Validators(SmtpValidators):
    def handle_auth(self, reply, creds):
        if not creds.check_secret("pw"):
            reply.code = "535"


def test_the_audit_hook_sees_inet_sockets(audited):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    assert audited, "the audit hook must see an AF_INET socket being made"
    audited.clear()


def test_no_helper_opens_a_network_socket(audited):
    with SmtpConversation(Validators, tls=True, auth=True) as conv:
        conv.ehlo()
        conv.starttls()
        conv.ehlo()
        conv.auth("u", "pw")
        conv.mail("a@example.com")
        conv.rcpt("b@example.com")
        conv.data(b"Subject: x\r\n\r\nhi\r\n")
    with QueueClock() as clock, RecordingSmtpPeer(tls=True) as peer:
        relay = StaticSmtpRelay("peer.example.test", socket_creator=peer.socket_creator)
        queue = Queue(DictStorage(), relay)
        queue.start()
        try:
            queue.enqueue(make_envelope())
            peer.wait_for_messages(1)
            clock.advance(10)
        finally:
            queue.kill()
            relay.kill()
    recording = RecordingRelay()
    recording.attempt(make_envelope(), 0)
    assert audited == []
