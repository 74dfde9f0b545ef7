"""Per-client limits of SmtpEdge (slimta.edge.limits), over loopback."""

from __future__ import annotations

import smtplib
import time

import gevent
import pytest

from slimta.edge.limits import ClientLimits, Limiter, MemoryCounters, RedisCounters

from .conftest import SourceClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

OPEN = ClientLimits.off()


def _limits(**kwargs):
    return ClientLimits(**{**{f: getattr(OPEN, f) for f in OPEN.__dataclass_fields__}, **kwargs})


# -- the limiter alone -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_estimate():
    clock = Clock()
    counters = MemoryCounters(clock)
    clock.now = 600.0  # start of a window
    for _ in range(10):
        counters.hit("k", "ip", 60.0)
    clock.now = 690.0  # half into the next window: 10 * 0.5 + 1
    assert counters.hit("k", "ip", 60.0) == pytest.approx(6.0)
    clock.now = 800.0  # more than a whole window later: forgotten
    assert counters.hit("k", "ip", 60.0) == pytest.approx(1.0)


def test_memory_counters_are_swept():
    clock = Clock()
    counters = MemoryCounters(clock, sweep_every=100)
    for n in range(99):
        counters.hit("k", f"ip{n}", 60.0)
    clock.now += 1000
    counters.hit("k", "last", 60.0)
    assert len(counters) == 1


def test_keys_networks_and_exemptions():
    limiter = Limiter(ClientLimits())
    assert limiter._keys(("127.0.0.1", 25)) == (None, "")
    assert limiter._keys(("::1", 25, 0, 0)) == (None, "")
    assert limiter._keys(("192.0.2.7", 25)) == ("192.0.2.7", "192.0.2.0/24")
    assert limiter._keys(("::ffff:192.0.2.7", 25, 0, 0)) == ("192.0.2.7", "192.0.2.0/24")
    assert limiter._keys(("2001:db8:1:2:3::4", 25, 0, 0)) == ("2001:db8:1:2:3::4", "2001:db8:1:2::/64")
    assert limiter._keys("/run/smtp.sock") == (None, "")
    assert limiter._keys(None) == (None, "")


def test_off_switches_everything_off():
    limiter = Limiter(ClientLimits.off())
    for _ in range(5000):
        limiter.open()
        assert limiter.admit(("192.0.2.1", 1)) is None
        assert limiter.check_message(("192.0.2.1", 1), None) is None
        limiter.auth_failed(("192.0.2.1", 1))
    assert not limiter.full()
    assert limiter.auth_blocked(("192.0.2.1", 1)) is None


def test_limiter_per_ip_and_release():
    limiter = Limiter(_limits(max_connections_per_ip=2))
    addr = ("192.0.2.1", 1)
    assert limiter.admit(addr) is None
    assert limiter.admit(addr) is None
    refused = limiter.admit(addr)
    assert refused is not None
    assert refused.code == "421"
    limiter.release(addr)
    assert limiter.admit(addr) is None
    assert limiter.admit(("192.0.2.2", 1)) is None


# -- through SmtpEdge ------------------------------------------------------------------


def test_total_cap_answers_421(edge_factory, raw_client):
    edge = edge_factory(limits=ClientLimits(max_connections=3))
    clients = [raw_client(edge.address) for _ in range(3)]
    extra = raw_client(edge.address, banner=False)
    code, text = extra.reply()
    assert code == 421
    assert b"4.7.0 Too many connections" in text
    assert extra.closed_by_server()
    clients[0].send(b"QUIT\r\n")
    clients[0].expect(221)
    deadline = time.monotonic() + 3
    while edge.edge.limiter.total > 2 and time.monotonic() < deadline:
        gevent.sleep(0.02)
    raw_client(edge.address).ehlo()


def test_per_ip_cap(edge_factory, raw_client):
    edge = edge_factory(limits=_limits(max_connections_per_ip=3))
    for _ in range(3):
        raw_client(edge.address).ehlo()
    extra = raw_client(edge.address, banner=False)
    code, text = extra.reply()
    assert code == 421
    assert b"from your address" in text


def test_per_network_cap(edge_factory):
    edge = edge_factory(limits=_limits(max_connections_per_network=2))
    a = SourceClient(edge.address, "127.0.0.1")
    b = SourceClient(edge.address, "127.0.0.2")
    c = SourceClient(edge.address, "127.0.0.3")
    try:
        a.expect(220)
        b.expect(220)
        code, text = c.reply()
        assert code == 421
        assert b"from your network" in text
    finally:
        for client in (a, b, c):
            client.close()


def test_connection_rate(edge_factory, raw_client):
    edge = edge_factory(limits=_limits(connections_per_minute=5))
    for _ in range(5):
        client = raw_client(edge.address)
        client.send(b"QUIT\r\n")
        client.expect(221)
    code, text = raw_client(edge.address, banner=False).reply()
    assert code == 421
    assert b"per minute" in text


def test_message_and_recipient_rates(edge_factory, raw_client):
    edge = edge_factory(limits=_limits(messages_per_minute=2, recipients_per_minute=3))
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<1@c.test>\r\nRCPT TO:<2@c.test>\r\nRSET\r\n")
    assert client.codes(4) == [250, 250, 250, 250]
    client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<3@c.test>\r\nRCPT TO:<4@c.test>\r\nRSET\r\n")
    codes = client.replies(4)
    assert [c for c, _ in codes] == [250, 250, 450, 250]
    assert b"4.7.1 Too many recipients" in codes[2][1]
    client.send(b"MAIL FROM:<a@b.test>\r\n")
    code, text = client.reply()
    assert code == 450
    assert b"4.7.1 Too many messages" in text


def test_auth_failures_per_hour(edge_factory, stdlib_server_context, client_context):
    def check(validators, reply, creds):
        if not creds.check_secret("right"):
            reply.code, reply.message = "535", "5.7.8 No"

    edge = edge_factory(
        context=stdlib_server_context,
        auth=True,
        overrides={"auth": check},
        limits=_limits(auth_failures_per_hour=2),
    )

    def attempt(password):
        client = smtplib.SMTP(*edge.address, timeout=5)
        try:
            client.starttls(context=client_context)
            client.ehlo()
            client.user, client.password = "user", password
            code, text = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, exc.smtp_error
        finally:
            client.close()
        return code, text

    assert gevent.spawn(attempt, "wrong").get(timeout=10)[0] == 535
    assert gevent.spawn(attempt, "wrong").get(timeout=10)[0] == 535
    code, text = gevent.spawn(attempt, "right").get(timeout=10)
    assert code == 454
    assert b"4.7.0" in text


@pytest.mark.timeout(60)
def test_flood_from_one_ip_while_another_is_served(edge_factory):
    """A flood from 127.0.0.1 is limited; 127.0.0.2 still gets its message through."""
    edge = edge_factory(limits=_limits(max_connections_per_ip=10, connections_per_minute=100))
    flood: list[SourceClient] = []
    refused = accepted = 0
    try:
        for _ in range(200):
            client = SourceClient(edge.address, "127.0.0.1")
            flood.append(client)
            code, _ = client.reply()
            if code == 421:
                refused += 1
            else:
                accepted += 1
        assert accepted == 10
        assert refused == 190
        start = time.monotonic()
        other = SourceClient(edge.address, "127.0.0.2")
        flood.append(other)
        other.expect(220)
        other.ehlo()
        other.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        assert other.codes(3) == [250, 250, 354]
        other.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
        other.expect(250)
        assert time.monotonic() - start < 1.0
        assert edge.queue.envelopes[-1].client["ip"] == "127.0.0.2"
    finally:
        for client in flood:
            client.close()


def test_rates_shared_through_redis(edge_factory, raw_client, redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    limits = _limits(messages_per_minute=2, redis=url, redis_prefix=f"t{time.monotonic_ns()}:")
    first = edge_factory(limits=limits)
    second = edge_factory(limits=limits)
    assert isinstance(first.edge.limiter.counters, RedisCounters)
    a = raw_client(first.address)
    a.ehlo()
    a.send(b"MAIL FROM:<a@b.test>\r\nRSET\r\nMAIL FROM:<a@b.test>\r\nRSET\r\n")
    assert a.codes(4) == [250, 250, 250, 250]
    b = raw_client(second.address)
    b.ehlo()
    b.send(b"MAIL FROM:<a@b.test>\r\n")
    assert b.reply()[0] == 450


def test_redis_failure_fails_open(edge_factory, raw_client):
    limits = _limits(messages_per_minute=1, redis="redis://127.0.0.1:1/0")
    edge = edge_factory(limits=limits)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<a@b.test>\r\nRSET\r\nMAIL FROM:<a@b.test>\r\n")
    assert client.codes(3) == [250, 250, 250]
