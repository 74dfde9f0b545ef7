"""slimta.util socket helpers over real loopback and AF_UNIX sockets."""

from __future__ import annotations

import errno
import socket as stdlib_socket
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from gevent import socket
from gevent.server import StreamServer

from slimta.core import SlimtaError
from slimta.util import (
    LISTEN_BACKLOG,
    InvalidAddressError,
    ListenerError,
    NoIPv4AddressError,
    build_ipv4_socket_creator,
    create_connection_ipv4,
    create_listeners,
)

pytestmark = pytest.mark.integration


def _have_ipv6_loopback() -> bool:
    try:
        with stdlib_socket.socket(stdlib_socket.AF_INET6, stdlib_socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _have_ipv6_loopback(), reason="host has no IPv6 loopback")


@pytest.fixture
def cleanup() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def _listen(cleanup: list[socket.socket], address: object, **kw: int) -> list[socket.socket]:
    socks = create_listeners(address, **kw)
    cleanup.extend(socks)
    return socks


def _echo_once(listener: socket.socket) -> gevent.Greenlet:
    def serve() -> bytes:
        # Listeners come back non-blocking (as gevent's servers want them);
        # make accept() wait cooperatively for this hand-written server.
        listener.setblocking(True)
        conn, _ = listener.accept()
        with conn:
            data = conn.recv(100)
            conn.sendall(data.upper())
            return data

    return gevent.spawn(serve)


def _round_trip(sock: socket.socket) -> bytes:
    with sock:
        sock.sendall(b"ping")
        return sock.recv(100)


# --- create_listeners -------------------------------------------------------


def test_backlog_constant_is_large() -> None:
    assert LISTEN_BACKLOG >= 1024
    assert LISTEN_BACKLOG >= stdlib_socket.SOMAXCONN


def test_ipv4_listener_accepts(cleanup: list[socket.socket]) -> None:
    [listener] = _listen(cleanup, ("127.0.0.1", 0))
    assert listener.family == socket.AF_INET
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    server = _echo_once(listener)
    client = socket.create_connection(listener.getsockname(), timeout=2)
    assert _round_trip(client) == b"PING"
    assert server.get(timeout=2) == b"ping"


@needs_ipv6
def test_ipv6_listener_is_v6only(cleanup: list[socket.socket]) -> None:
    [listener] = _listen(cleanup, ("::1", 0))
    assert listener.family == socket.AF_INET6
    assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    server = _echo_once(listener)
    client = socket.create_connection(listener.getsockname()[:2], timeout=2)
    assert _round_trip(client) == b"PING"
    server.get(timeout=2)


def test_listeners_are_nonblocking_and_serve_with_streamserver(cleanup: list[socket.socket]) -> None:
    [listener] = _listen(cleanup, ("127.0.0.1", 0))
    assert listener.gettimeout() == 0.0

    def handle(conn: socket.socket, _address: object) -> None:
        conn.sendall(conn.recv(100).upper())

    server = StreamServer(listener, handle)
    server.start()
    try:
        for _ in range(3):
            client = socket.create_connection(listener.getsockname(), timeout=2)
            assert _round_trip(client) == b"PING"
    finally:
        server.stop(timeout=1)


def test_wildcard_binds_every_family(cleanup: list[socket.socket]) -> None:
    socks = _listen(cleanup, (None, 0))
    families = {s.family for s in socks}
    assert socket.AF_INET in families
    if _have_ipv6_loopback():
        assert socket.AF_INET6 in families
    v4 = next(s for s in socks if s.family == socket.AF_INET)
    assert v4.getsockname()[0] == "0.0.0.0"


def test_localhost_resolves_and_listens(cleanup: list[socket.socket]) -> None:
    socks = _listen(cleanup, ("localhost", 0))
    hosts = {s.getsockname()[0] for s in socks}
    assert hosts <= {"127.0.0.1", "::1"}
    assert "127.0.0.1" in hosts or "::1" in hosts


def test_family_restricts_results(cleanup: list[socket.socket]) -> None:
    socks = _listen(cleanup, (None, 0), family=socket.AF_INET)
    assert [s.family for s in socks] == [socket.AF_INET]


def test_unix_listener(cleanup: list[socket.socket], tmp_path: Path) -> None:
    path = str(tmp_path / "mta.sock")
    [listener] = _listen(cleanup, path, family=socket.AF_UNIX)
    assert listener.family == socket.AF_UNIX
    assert Path(path).is_socket()
    server = _echo_once(listener)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    assert _round_trip(client) == b"PING"
    server.get(timeout=2)


def test_unix_listener_accepts_pathlike(cleanup: list[socket.socket], tmp_path: Path) -> None:
    [listener] = _listen(cleanup, tmp_path / "p.sock", family=socket.AF_UNIX)
    assert listener.getsockname() == str(tmp_path / "p.sock")


def test_unix_path_in_use(cleanup: list[socket.socket], tmp_path: Path) -> None:
    path = str(tmp_path / "busy.sock")
    _listen(cleanup, path, family=socket.AF_UNIX)
    with pytest.raises(ListenerError, match=r"busy\.sock") as info:
        create_listeners(path, family=socket.AF_UNIX)
    assert info.value.errno == errno.EADDRINUSE


def test_unix_needs_a_path() -> None:
    with pytest.raises(InvalidAddressError, match="needs a path"):
        create_listeners(("127.0.0.1", 0), family=socket.AF_UNIX)


def test_tcp_port_in_use(cleanup: list[socket.socket]) -> None:
    [first] = _listen(cleanup, ("127.0.0.1", 0))
    port = first.getsockname()[1]
    with pytest.raises(ListenerError, match=str(port)) as info:
        create_listeners(("127.0.0.1", port))
    assert info.value.errno == errno.EADDRINUSE
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, SlimtaError)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:25",
        ("127.0.0.1",),
        ("127.0.0.1", 25, 0),
        ("127.0.0.1", "25"),
        (b"127.0.0.1", 25),
        None,
    ],
)
def test_bad_tcp_address_shapes(address: object) -> None:
    with pytest.raises(InvalidAddressError) as info:
        create_listeners(address)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("port", [-1, 65536, True])
def test_port_out_of_range(port: object) -> None:
    with pytest.raises(InvalidAddressError, match="port must be an integer from 0 to 65535"):
        create_listeners(("127.0.0.1", port))


def test_port_at_the_limit_is_accepted(cleanup: list[socket.socket]) -> None:
    # 65535 is valid; it may be taken on a busy host, which is a bind error,
    # not an address-shape error.
    try:
        [listener] = _listen(cleanup, ("127.0.0.1", 65535))
    except ListenerError as exc:
        failure: ListenerError | None = exc
    else:
        failure = None
        assert listener.getsockname()[1] == 65535
    assert failure is None or failure.errno == errno.EADDRINUSE


def test_unresolvable_host() -> None:
    with pytest.raises(ListenerError, match=r"nonexistent\.invalid"):
        create_listeners(("nonexistent.invalid", 0))


def test_burst_of_1000_connects_is_served(cleanup: list[socket.socket]) -> None:
    """All 1,000 connects complete at once, even before anyone accepts.

    A backlog too small for the burst makes the kernel drop the excess SYNs;
    the clients then retransmit after about a second, which this test
    catches by requiring every connect to finish well within that.
    """
    [listener] = _listen(cleanup, ("127.0.0.1", 0))
    address = listener.getsockname()
    n = 1000
    clients: list[socket.socket] = []

    def connect() -> float:
        start = time.monotonic()
        clients.append(socket.create_connection(address, timeout=5))
        return time.monotonic() - start

    try:
        connectors = [gevent.spawn(connect) for _ in range(n)]
        gevent.joinall(connectors, timeout=10, raise_error=True)
        slowest = max(g.get() for g in connectors)
        assert slowest < 0.9, f"slowest connect took {slowest:.2f}s: SYNs were dropped"
        # Now serve them all: each gets a byte through.
        for c in clients:
            c.sendall(b"x")
        accepted = 0
        deadline = time.monotonic() + 5
        while accepted < n and time.monotonic() < deadline:
            conn, _ = listener.accept()
            with conn:
                assert conn.recv(1) == b"x"
            accepted += 1
        assert accepted == n
    finally:
        for c in clients:
            c.close()


# --- create_connection_ipv4 and build_ipv4_socket_creator -------------------


def test_connect_ipv4_by_name(cleanup: list[socket.socket]) -> None:
    [listener] = _listen(cleanup, ("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = _echo_once(listener)
    sock = create_connection_ipv4(("localhost", port), timeout=2)
    assert sock.family == socket.AF_INET
    assert sock.getpeername() == ("127.0.0.1", port)
    assert sock.gettimeout() == 2
    assert _round_trip(sock) == b"PING"
    server.get(timeout=2)


def test_ipv6_literal_is_refused_clearly() -> None:
    with pytest.raises(NoIPv4AddressError, match=r"no IPv4 address for '::1'") as info:
        create_connection_ipv4(("::1", 25), timeout=2)
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, SlimtaError)


@needs_ipv6
def test_never_falls_back_to_ipv6(cleanup: list[socket.socket]) -> None:
    # Only an IPv6 listener on this port: an IPv4-only connect must fail even
    # though the name would reach it over IPv6.
    [listener] = _listen(cleanup, ("::1", 0))
    port = listener.getsockname()[1]
    with pytest.raises(NoIPv4AddressError):
        create_connection_ipv4(("::1", port), timeout=2)
    with pytest.raises(ConnectionRefusedError):
        create_connection_ipv4(("127.0.0.1", port), timeout=2)


@needs_ipv6
def test_only_ports_exempts_other_ports(cleanup: list[socket.socket]) -> None:
    [listener] = _listen(cleanup, ("::1", 0))
    port = listener.getsockname()[1]
    # Port not in only_ports: the ordinary create_connection is used, IPv6 ok.
    sock = create_connection_ipv4(("::1", port), timeout=2, only_ports=[port + 1])
    with sock:
        assert sock.family == socket.AF_INET6
    # Port in only_ports: restricted to IPv4.
    with pytest.raises(NoIPv4AddressError):
        create_connection_ipv4(("::1", port), timeout=2, only_ports=[port])


def test_connection_refused_is_reported() -> None:
    with stdlib_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        create_connection_ipv4(("127.0.0.1", port), timeout=2)


def test_source_address(cleanup: list[socket.socket]) -> None:
    [listener] = _listen(cleanup, ("127.0.0.1", 0))
    server = _echo_once(listener)
    sock = create_connection_ipv4(listener.getsockname(), 2, ("127.0.0.1", 0))
    assert sock.getsockname()[0] == "127.0.0.1"
    assert _round_trip(sock) == b"PING"
    server.get(timeout=2)


def test_connect_rejects_bad_address() -> None:
    with pytest.raises(InvalidAddressError, match="expected a \\(host, port\\) tuple"):
        create_connection_ipv4("127.0.0.1:25")  # type: ignore[arg-type]


def test_socket_creator(cleanup: list[socket.socket]) -> None:
    [listener] = _listen(cleanup, ("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ports = [port]
    creator = build_ipv4_socket_creator(ports)
    ports.clear()  # later changes to the caller's list must not matter
    server = _echo_once(listener)
    sock = creator(("localhost", port), 2)
    assert sock.family == socket.AF_INET
    assert _round_trip(sock) == b"PING"
    server.get(timeout=2)
    with pytest.raises(NoIPv4AddressError):
        creator(("::1", port), timeout=2)


def test_socket_creator_without_ports_restricts_everything() -> None:
    creator = build_ipv4_socket_creator()
    with pytest.raises(NoIPv4AddressError):
        creator(("::1", 25), source_address=None)
