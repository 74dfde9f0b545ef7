"""200 concurrent SMTP sessions x 10 messages: each is delivered exactly once.

python-slimta 4.0 fixed a race on enqueue; this proves ours has none, through
the whole path a real server uses: SmtpEdge -> Queue(DictStorage) -> relay.
"""

from __future__ import annotations

import smtplib
from collections import Counter

import gevent
import pytest

from slimta.edge.smtp import SmtpEdge
from slimta.envelope import Envelope
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay import Relay

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SESSIONS = 200
PER_SESSION = 10


class CountingRelay(Relay):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def attempt(self, envelope: Envelope, attempts: int) -> None:
        gevent.sleep(0)  # let other deliveries interleave
        self.seen[str(envelope.headers["X-Seq"])] += 1


def test_every_message_delivered_exactly_once():
    relay = CountingRelay()
    queue = Queue(DictStorage(), relay)
    queue.start()
    edge = SmtpEdge(("127.0.0.1", 0), queue, hostname="mx.test")
    edge.start()
    port = edge.server.address[1]
    acked: list[str] = []

    def session(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            for i in range(PER_SESSION):
                seq = f"{n}-{i}"
                client.sendmail("a@src.test", ["b@dst.test"], f"X-Seq: {seq}\r\n\r\nmessage {seq}\r\n")
                acked.append(seq)

    try:
        greenlets = [gevent.spawn(session, n) for n in range(SESSIONS)]
        gevent.joinall(greenlets, timeout=45, raise_error=True)
        assert len(acked) == SESSIONS * PER_SESSION
        with gevent.Timeout(10):
            while sum(relay.seen.values()) < len(acked):
                gevent.sleep(0.05)
        gevent.sleep(0.2)  # a duplicate delivery would show up now
    finally:
        edge.kill()
        queue.kill()
    assert set(relay.seen) == set(acked)
    assert max(relay.seen.values()) == 1
