"""PROXY protocol v1/v2 headers sent raw over loopback to a real SmtpEdge."""

from __future__ import annotations

import logging
import socket
import struct
import time

import gevent
import pytest

from slimta.core import SlimtaError
from slimta.edge.smtp import SmtpEdge, SmtpValidators
from slimta.util.proxyproto import (
    InvalidProxyHeader,
    LocalConnection,
    ProxyProtocol,
    ProxyProtocolError,
    ProxyProtocolV1,
    ProxyProtocolV2,
    unknown_pp_source_address,
)

from ._support import connect, drain, inet4, inet6, read_line, read_until_closed, v2_header

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

LOGGER = "slimta.util.proxyproto"
V1_TCP4 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"
V2_TCP4 = v2_header(addresses=inet4("192.0.2.1", "198.51.100.2", 56324, 25))


def _banner_after(edge, payload: bytes):
    with connect(edge.address) as sock:
        sock.sendall(payload)
        banner = read_line(sock)
        local_port = sock.getsockname()[1]
    return banner, local_port


# -- valid headers -------------------------------------------------------------


@pytest.mark.parametrize("mixin", [ProxyProtocolV1, ProxyProtocol])
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (V1_TCP4, ("192.0.2.1", 56324)),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 25\r\n", ("2001:db8::1", 65535)),
        (b"PROXY TCP6 2001:DB8:0:0::7 ::1 0 25\r\n", ("2001:db8::7", 0)),
    ],
)
def test_v1_source_reaches_handle_banner(edge_factory, mixin, header, expected, caplog):
    edge = edge_factory(mixin)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        banner, _ = _banner_after(edge, header)
    assert banner.startswith(b"220 ")
    assert edge.banners == [expected]
    assert any("ppsuccess" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mixin", [ProxyProtocolV1, ProxyProtocol])
@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_v1_unknown_uses_socket_peer(edge_factory, mixin, header):
    edge = edge_factory(mixin)
    banner, local_port = _banner_after(edge, header)
    assert banner.startswith(b"220 ")
    assert edge.banners == [("127.0.0.1", local_port)]


@pytest.mark.parametrize("mixin", [ProxyProtocolV2, ProxyProtocol])
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (V2_TCP4, ("192.0.2.1", 56324)),
        (
            v2_header(family=0x21, addresses=inet6("2001:db8::1", "2001:db8::2", 4000, 25)),
            ("2001:db8::1", 4000),
        ),
        (
            # TLVs after the addresses (ALPN, authority, a made-up type) are skipped.
            v2_header(
                addresses=inet4("203.0.113.9", "198.51.100.2", 1234, 25),
                tlvs=b"\x01\x00\x04smtp" + b"\x02\x00\x07mx.test" + b"\xe0\x00\x00",
            ),
            ("203.0.113.9", 1234),
        ),
        (
            v2_header(
                family=0x31,
                addresses=b"/run/client.sock".ljust(108, b"\0") + b"/run/mta.sock".ljust(108, b"\0"),
            ),
            "/run/client.sock",
        ),
    ],
)
def test_v2_source_reaches_handle_banner(edge_factory, mixin, header, expected):
    edge = edge_factory(mixin)
    banner, _ = _banner_after(edge, header)
    assert banner.startswith(b"220 ")
    assert edge.banners == [expected]


@pytest.mark.parametrize("mixin", [ProxyProtocolV2, ProxyProtocol])
def test_v2_local_health_check_uses_socket_peer(edge_factory, mixin, caplog):
    edge = edge_factory(mixin)
    # A LOCAL header may still carry addresses; they are ignored.
    header = v2_header(command=0, family=0x11, addresses=inet4("192.0.2.1", "192.0.2.2", 1, 2))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        banner, local_port = _banner_after(edge, header)
    assert banner.startswith(b"220 ")
    assert edge.banners == [("127.0.0.1", local_port)]
    assert any("pplocal" in r.getMessage() for r in caplog.records)


def test_v2_unspec_family_uses_socket_peer(edge_factory):
    edge = edge_factory(ProxyProtocolV2)
    banner, local_port = _banner_after(edge, v2_header(family=0x00))
    assert banner.startswith(b"220 ")
    assert edge.banners == [("127.0.0.1", local_port)]


# -- exactly the header is consumed -----------------------------------------------


@pytest.mark.parametrize(
    ("mixin", "header"),
    [
        (ProxyProtocolV1, V1_TCP4),
        (ProxyProtocolV2, V2_TCP4),
        (ProxyProtocol, V1_TCP4),
        (ProxyProtocol, V2_TCP4),
    ],
)
def test_smtp_pipelined_behind_header_is_preserved(edge_factory, mixin, header):
    edge = edge_factory(mixin)
    smtp = b"EHLO c.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n"
    with connect(edge.address) as sock:
        sock.sendall(header + smtp)  # one segment
        assert read_line(sock).startswith(b"220 ")
        line = read_line(sock)
        while line.startswith(b"250-"):
            line = read_line(sock)
        assert line.startswith(b"250 ")
        assert read_line(sock).startswith(b"250 ")  # MAIL
        assert read_line(sock).startswith(b"250 ")  # RCPT
        assert read_line(sock).startswith(b"354 ")
        sock.sendall(b"Subject: pp\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert read_line(sock).startswith(b"250 ")
        assert read_line(sock).startswith(b"221 ")
    (env,) = edge.queue.envelopes
    assert env.client["ip"] == "192.0.2.1"
    assert env.recipients == ["b@dst.test"]


@pytest.mark.parametrize(
    ("mixin", "header"),
    [
        (ProxyProtocolV1, V1_TCP4),
        (ProxyProtocolV2, V2_TCP4),
        (ProxyProtocol, V1_TCP4),
        (ProxyProtocol, V2_TCP4),
    ],
)
def test_header_split_one_octet_per_send(edge_factory, mixin, header):
    edge = edge_factory(mixin)
    with connect(edge.address) as sock:
        for i in range(len(header)):
            sock.send(header[i : i + 1])
            gevent.sleep(0.002)
        assert read_line(sock).startswith(b"220 ")
        sock.sendall(b"QUIT\r\n")
        assert read_line(sock).startswith(b"221 ")
    assert edge.banners == [("192.0.2.1", 56324)]


def test_v1_cr_and_lf_in_separate_segments(edge_factory):
    edge = edge_factory(ProxyProtocolV1)
    with connect(edge.address) as sock:
        sock.sendall(V1_TCP4[:-1])
        gevent.sleep(0.05)
        sock.sendall(b"\nQUIT\r\n")
        assert read_line(sock).startswith(b"220 ")
        assert read_line(sock).startswith(b"221 ")
    assert edge.banners == [("192.0.2.1", 56324)]


# -- missing, invalid, oversized and slow headers: closed -----------------------------


def _assert_closed_without_banner(edge, payload: bytes, caplog, reason: str | None = None):
    with caplog.at_level(logging.WARNING, logger=LOGGER), connect(edge.address) as sock:
        sock.sendall(payload)
        assert read_until_closed(sock) == b""
    assert edge.banners == []
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("ppinvalid" in m for m in messages), messages
    if reason is not None:
        assert any(reason in m for m in messages), messages


@pytest.mark.parametrize("mixin", [ProxyProtocolV1, ProxyProtocolV2, ProxyProtocol])
def test_missing_header_smtp_client_is_closed(edge_factory, mixin, caplog):
    edge = edge_factory(mixin)
    started = time.monotonic()
    _assert_closed_without_banner(edge, b"EHLO direct.test\r\n", caplog, "signature")
    assert time.monotonic() - started < 2  # at once, not after the timeout


@pytest.mark.parametrize(
    "payload",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",  # a field short
        b"PROXY TCP4 999.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 25\r\n",  # family mismatch
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 0056 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +56 25\r\n",
        b"PROXY TCP4  192.0.2.1 198.51.100.2 56 25\r\n",
        b"PROXY UDP4 192.0.2.1 198.51.100.2 56 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56 25\n",  # bare LF
        b"proxy TCP4 192.0.2.1 198.51.100.2 56 25\r\n",
        b"\x00\xff garbage \xfe\r\n",
    ],
)
def test_invalid_v1_is_closed(edge_factory, payload, caplog):
    _assert_closed_without_banner(edge_factory(ProxyProtocol), payload, caplog)


@pytest.mark.parametrize(
    "payload",
    [
        V2_TCP4[:11] + b"X" + V2_TCP4[12:],  # signature
        V2_TCP4[:12] + b"\x11" + V2_TCP4[13:],  # version 1 in a v2 header
        V2_TCP4[:12] + b"\x22" + V2_TCP4[13:],  # command 2
        v2_header(family=0x12, addresses=inet4("192.0.2.1", "192.0.2.2", 1, 2)),  # UDP
        v2_header(family=0x41, addresses=b"x" * 12),  # unknown family
        v2_header(family=0x21, addresses=inet4("192.0.2.1", "192.0.2.2", 1, 2)),  # too short for IPv6
        v2_header(addresses=b"\x01\x02\x03"),
    ],
)
def test_invalid_v2_is_closed(edge_factory, payload, caplog):
    _assert_closed_without_banner(edge_factory(ProxyProtocol), payload, caplog)


@pytest.mark.parametrize("payload", [V1_TCP4[:20], V2_TCP4[:10], V2_TCP4[:20], b""])
def test_eof_inside_header_is_closed(edge_factory, payload, caplog):
    edge = edge_factory(ProxyProtocol)
    with caplog.at_level(logging.WARNING, logger=LOGGER), connect(edge.address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""
    assert edge.banners == []
    assert any("ppinvalid" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mixin", [ProxyProtocolV1, ProxyProtocol])
def test_100kb_v1_header_closed_at_the_cap(edge_factory, mixin, caplog):
    edge = edge_factory(mixin)
    payload = b"PROXY TCP4 " + b"1" * 100_000 + b"\r\n"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER), connect(edge.address) as sock:
        sock.sendall(payload)
        # The edge closes with ~100 KB unread in its receive buffer, which
        # makes the kernel answer with a reset: proof it was not all read.
        with pytest.raises(ConnectionResetError):
            drain(sock)
    assert time.monotonic() - started < 2
    assert edge.banners == []
    assert any("longer than 107" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mixin", [ProxyProtocolV2, ProxyProtocol])
def test_100kb_v2_header_closed_before_its_body(edge_factory, mixin, caplog):
    edge = edge_factory(mixin)
    payload = v2_header(addresses=b"\0" * 100_000, length=0xFFFF)
    with caplog.at_level(logging.WARNING, logger=LOGGER), connect(edge.address) as sock:
        sock.sendall(payload)
        with pytest.raises(ConnectionResetError):
            drain(sock)
    assert edge.banners == []
    assert any("longer than 4112" in r.getMessage() for r in caplog.records)


def test_v2_length_cap_is_configurable(edge_factory):
    edge = edge_factory(ProxyProtocolV2, max_v2_length=8192)
    header = v2_header(addresses=inet4("192.0.2.1", "192.0.2.2", 7, 25), tlvs=b"\xe0\x13\x88" + b"t" * 5000)
    banner, _ = _banner_after(edge, header)
    assert banner.startswith(b"220 ")
    assert edge.banners == [("192.0.2.1", 7)]


@pytest.mark.parametrize("partial", [b"", b"PROXY TCP4 192.0.2.1 ", V2_TCP4[:14]])
def test_slow_header_closed_at_the_timeout(edge_factory, partial, caplog):
    edge = edge_factory(ProxyProtocol, timeout=0.5)
    started = time.monotonic()
    _assert_closed_without_banner(edge, partial, caplog, "within 0.5 seconds")
    assert 0.4 < time.monotonic() - started < 2.5


def test_slow_drip_cannot_extend_the_timeout(edge_factory, caplog):
    edge = edge_factory(ProxyProtocolV1, timeout=0.6)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER), connect(edge.address) as sock:
        data = b""
        try:
            for octet in V1_TCP4[:-2]:
                sock.send(bytes([octet]))
                gevent.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            data = read_until_closed(sock)
        assert b"220" not in data
    assert time.monotonic() - started < 6
    assert edge.banners == []


def test_other_connections_served_while_one_stalls(edge_factory):
    edge = edge_factory(ProxyProtocol, timeout=5)
    stalled = connect(edge.address)
    try:
        stalled.sendall(b"PROXY TCP4 ")
        banner, _ = _banner_after(edge, V1_TCP4)
        assert banner.startswith(b"220 ")
    finally:
        stalled.close()


# -- API ------------------------------------------------------------------------


def test_mixin_refuses_non_edges_and_twice(edge_factory):
    with pytest.raises(ValueError, match="object"):
        ProxyProtocol.mixin(object())  # type: ignore[arg-type]
    edge = edge_factory(ProxyProtocolV1)
    with pytest.raises(ValueError, match="SmtpEdge"):
        ProxyProtocolV2.mixin(edge.edge)
    assert type(edge.edge).__name__ == "ProxyProtocolV1SmtpEdge"
    assert isinstance(edge.edge, SmtpEdge)


def test_static_subclass_works(caplog):
    class ProxiedEdge(ProxyProtocolV1, SmtpEdge):
        proxyproto_timeout = 2.0

    seen = []

    class Validators(SmtpValidators):
        def handle_banner(self, reply, address):
            seen.append(address)

    edge = ProxiedEdge(("127.0.0.1", 0), None, validator_class=Validators, hostname="mx.test")
    edge.start()
    try:
        banner, _ = _banner_after(type("E", (), {"address": ("127.0.0.1", edge.server.address[1])}), V1_TCP4)
    finally:
        edge.kill(block=True, timeout=2)
    assert banner.startswith(b"220 ")
    assert seen == [("192.0.2.1", 56324)]


def test_parse_pp_line():
    assert ProxyProtocolV1.parse_pp_line(V1_TCP4) == (("192.0.2.1", 56324), ("198.51.100.2", 25))
    assert ProxyProtocolV1.parse_pp_line(b"PROXY UNKNOWN\r\n")[0] == unknown_pp_source_address
    with pytest.raises(InvalidProxyHeader):
        ProxyProtocolV1.parse_pp_line(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2")


def test_error_tree():
    assert issubclass(InvalidProxyHeader, ProxyProtocolError)
    assert issubclass(LocalConnection, ProxyProtocolError)
    assert issubclass(ProxyProtocolError, SlimtaError)


def test_struct_layout_of_v2_helper():
    header = v2_header(addresses=inet4("192.0.2.1", "192.0.2.2", 1, 2))
    assert len(header) == 28
    assert struct.unpack("!H", header[14:16]) == (12,)
