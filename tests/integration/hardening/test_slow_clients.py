"""Early talkers, slowloris clients and clients that never read (RELIABILITY R4)."""

from __future__ import annotations

import socket
import time

import gevent
import pytest

from slimta.edge.limits import ClientLimits
from slimta.edge.smtp import SmtpEdge
from tests.integration.edge.conftest import RawClient, RecordingQueue

from .conftest import raise_nofile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _wait_closed(client: RawClient, limit: float) -> float:
    """Seconds until the server closed ``client`` (fails past ``limit``)."""
    start = time.monotonic()
    assert client.closed_by_server(limit), f"still open after {limit} s"
    return time.monotonic() - start


def test_early_talker_refused_without_delay():
    edge = SmtpEdge(("127.0.0.1", 0), RecordingQueue(), hostname="mx.test")
    client = RawClient(("127.0.0.1", edge.server.address[1]))
    try:
        # Connected and talking before the edge even runs: the banner is
        # not out yet, so this is pre-greeting traffic.
        client.send(b"EHLO early.test\r\n")
        edge.start()
        code, text = client.reply()
        assert code == 554
        assert b"5.5.0" in text
        assert client.closed_by_server()
        assert edge.limiter.total == 0
    finally:
        client.close()
        edge.kill()


def test_greet_pause_catches_a_talker_and_delays_nobody_else(edge_factory, raw_client):
    edge = edge_factory(greet_pause=0.5)
    talker = raw_client(edge.address, banner=False)
    gevent.sleep(0.1)
    talker.send(b"EHLO early.test\r\n")
    assert talker.reply()[0] == 554
    start = time.monotonic()
    polite = raw_client(edge.address)
    assert 0.4 < time.monotonic() - start < 1.5
    polite.ehlo()


def test_no_greet_pause_by_default(edge, raw_client):
    start = time.monotonic()
    raw_client(edge.address).ehlo()
    assert time.monotonic() - start < 0.5


def test_trickled_command_cut_at_its_deadline(edge_factory, raw_client):
    edge = edge_factory(command_timeout=1.0)
    client = raw_client(edge.address)
    start = time.monotonic()
    for octet in b"EHLO slow.test":
        try:
            client.send(bytes([octet]))
        except OSError:
            break
        gevent.sleep(0.2)
        if time.monotonic() - start > 3:
            break
    assert client.reply()[0] == 421
    assert time.monotonic() - start < 1.0 + 1.0


def test_minimum_data_rate(edge_factory, raw_client):
    edge = edge_factory(data_timeout=20, min_data_rate=500.0)
    edge.edge.data_rate_grace = 0.5
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert client.codes(3) == [250, 250, 354]
    start = time.monotonic()
    cut = False
    for _ in range(60):  # 10 B/s
        try:
            client.send(b"0123456789")
        except OSError:
            cut = True
            break
        if client.closed_by_server(1.0):
            cut = True
            break
    assert cut
    assert time.monotonic() - start < 0.5 + 2.0
    assert edge.queue.envelopes == []


def test_fast_data_is_not_cut(edge_factory, raw_client):
    edge = edge_factory(min_data_rate=500.0)
    edge.edge.data_rate_grace = 0.2
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert client.codes(3) == [250, 250, 354]
    for _ in range(5):
        client.send(b"x" * 400 + b"\r\n")
        gevent.sleep(0.1)
    client.send(b".\r\n")
    client.expect(250)


def test_session_lifetime_cap(edge_factory, raw_client):
    edge = edge_factory(session_timeout=1.5, command_timeout=5)
    client = raw_client(edge.address)
    start = time.monotonic()
    codes = []
    for _ in range(20):
        gevent.sleep(0.25)
        try:
            client.send(b"HELO c.test\r\n")
            codes.append(client.reply()[0])
        except (OSError, ConnectionError):
            break
        if codes[-1] == 421:
            break
    assert 421 in codes
    assert 1.5 <= time.monotonic() - start < 1.5 + 1.0


def test_client_that_never_reads_is_cut(edge_factory):
    """Replies fill the TCP window; the send timeout frees the session."""
    edge = edge_factory(command_timeout=1.0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(edge.address)
    sock.settimeout(5)
    try:
        assert sock.recv(1024).startswith(b"220 ")
        payload = b"EHLO never-reads.test\r\n" * 4000

        def flood() -> None:
            for _ in range(20):
                try:
                    sock.sendall(payload)
                except OSError:
                    return

        sender = gevent.spawn(flood)
        gevent.sleep(0.2)
        assert edge.edge.limiter.total == 1
        deadline = time.monotonic() + 4.0
        while edge.edge.limiter.total and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert edge.edge.limiter.total == 0, "the session is still open"
        sender.kill()
    finally:
        sock.close()


@pytest.mark.timeout(60)
def test_thousand_slowloris_and_a_normal_client(edge_factory):
    raise_nofile(4096)
    deadline = 2.0
    edge = edge_factory(
        command_timeout=deadline,
        data_timeout=deadline,
        min_data_rate=500.0,
        limits=ClientLimits(max_connections=5000),
    )
    edge.edge.data_rate_grace = 1.0
    cut_after: list[float] = []
    banners = 0

    def slow(kind: int) -> None:
        nonlocal banners
        client = RawClient(edge.address, timeout=deadline + 3)
        try:
            client.expect(220)
            banners += 1
            if kind == 2:
                client.ehlo()
                client.send(b"MAIL FROM:<")
            elif kind == 3:
                client.ehlo()
                client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
                client.codes(3)
            start = time.monotonic()
            for _ in range(int((deadline + 3) / 0.5)):
                if kind:
                    try:
                        client.send(b"x")
                    except OSError:
                        break
                if client.closed_by_server(0.5):
                    break
            cut_after.append(time.monotonic() - start)
        finally:
            client.close()

    slows = [gevent.spawn(slow, n % 4) for n in range(1000)]
    gevent.sleep(0.5)
    start = time.monotonic()
    normal = RawClient(edge.address)
    normal.expect(220)
    normal.ehlo()
    normal.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert normal.codes(3) == [250, 250, 354]
    normal.send(b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    assert normal.codes(2) == [250, 221]
    served_in = time.monotonic() - start
    normal.close()
    gevent.joinall(slows, timeout=deadline + 10, raise_error=True)
    print(f"normal client served in {served_in:.3f} s; slow clients cut after max {max(cut_after):.2f} s")
    assert served_in < 1.0
    assert banners == 1000
    assert len(cut_after) == 1000
    assert max(cut_after) <= deadline + 1.0
    assert len(edge.queue.envelopes) == 1
