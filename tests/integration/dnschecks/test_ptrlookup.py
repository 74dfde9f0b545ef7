"""PtrLookup and fcrdns against a real DNS server on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import gevent
import pytest

from slimta.util.dns import DNSResolver
from slimta.util.ptrlookup import PtrLookup, fcrdns
from tests.integration.dns.server import DROP, SERVFAIL, DNSTestServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

REV4 = "1.0.0.127.in-addr.arpa"
V6 = "2001:db8::5"
REV6 = "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"


def run(ip: str, runtime: float = 3.0, **kwargs: bool) -> str | None:
    lookup = PtrLookup(ip, **kwargs)
    lookup.start()
    return lookup.finish(runtime=runtime)


def test_ptr_name(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(REV4, "PTR")] = ["client.example.test."]
    assert run("127.0.0.1") == "client.example.test"
    assert [q[:2] for q in dns_server.queries] == [(REV4, "PTR")]


def test_ipv6_and_ipv4_mapped(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(REV4, "PTR")] = ["v4.example.test"]
    dns_server.zone[(REV6, "PTR")] = ["v6.example.test"]
    assert run("::ffff:127.0.0.1") == "v4.example.test"
    assert run(V6) == "v6.example.test"
    assert run("[2001:db8::5]") == "v6.example.test"


@pytest.mark.parametrize("mode", [SERVFAIL, DROP, None])
def test_no_name(dns_server: DNSTestServer, dns_resolver: DNSResolver, mode: str | None) -> None:
    if mode is not None:
        dns_server.zone[REV4] = mode
    assert run("127.0.0.1", runtime=2.0) is None
    assert run("not an address") is None


def test_finish_waits_only_for_the_rest_of_runtime(
    dns_server: DNSTestServer, dns_resolver: DNSResolver
) -> None:
    dns_server.zone[(REV4, "PTR")] = ["slow.example.test"]
    dns_server.delay = 1.0
    lookup = PtrLookup("127.0.0.1")
    lookup.start()
    gevent.sleep(0.3)
    start = time.monotonic()
    assert lookup.finish(runtime=0.5) is None
    waited = time.monotonic() - start
    assert 0.1 < waited < 0.4, waited
    gevent.sleep(0)
    assert lookup.dead  # killed on return
    assert lookup.finish(runtime=5.0) is None  # the same answer again, at once


def test_finish_without_runtime_does_not_wait(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(REV4, "PTR")] = ["slow.example.test"]
    dns_server.delay = 0.5
    lookup = PtrLookup("127.0.0.1")
    lookup.start()
    start = time.monotonic()
    assert lookup.finish() is None
    assert time.monotonic() - start < 0.1
    assert PtrLookup("127.0.0.1").finish(runtime=1.0) is None  # never started


def test_finish_after_the_answer(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(REV4, "PTR")] = ["quick.example.test"]
    lookup = PtrLookup("127.0.0.1")
    lookup.start()
    lookup.join(timeout=3)
    assert lookup.finish() == "quick.example.test"
    assert lookup.finish(runtime=0.0) == "quick.example.test"


@pytest.fixture
def connected() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    listener.close()
    yield client, server
    client.close()
    server.close()


def test_from_socket(connected: tuple[socket.socket, socket.socket]) -> None:
    client, server = connected
    peer, peer_port = PtrLookup.from_getpeername(server)
    assert (peer.ip, peer_port) == client.getsockname()
    local, local_port = PtrLookup.from_getsockname(server)
    assert (local.ip, local_port) == server.getsockname()
    assert isinstance(peer, PtrLookup)
    assert peer.start_time is None


def test_from_ipv6_socket() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    listener = socket.socket(socket.AF_INET6)
    try:
        listener.bind(("::1", 0))
    except OSError:
        listener.close()
        pytest.skip("no IPv6 loopback")
    with listener:
        lookup, port = PtrLookup.from_getsockname(listener)
        assert (lookup.ip, port) == ("::1", listener.getsockname()[1])


def test_forward_confirmed(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(REV4, "PTR")] = ["liar.example.test", "mx.example.test"]
    dns_server.zone[("liar.example.test", "A")] = ["192.0.2.9"]
    dns_server.zone[("mx.example.test", "A")] = ["192.0.2.8", "127.0.0.1"]
    assert run("127.0.0.1") == "liar.example.test"  # unverified: the first name
    assert run("127.0.0.1", verify=True) == "mx.example.test"
    assert fcrdns("127.0.0.1", timeout=2) == "mx.example.test"
    assert fcrdns("::ffff:127.0.0.1", timeout=2) == "mx.example.test"


def test_forward_confirmation_fails(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(REV4, "PTR")] = ["liar.example.test", "gone.example.test", "broken.example.test"]
    dns_server.zone[("liar.example.test", "A")] = ["192.0.2.9"]
    dns_server.zone[("broken.example.test", "A")] = SERVFAIL
    assert fcrdns("127.0.0.1", timeout=2) is None
    assert run("127.0.0.1", verify=True) is None
    assert fcrdns("bogus") is None


def test_forward_confirmed_ipv6(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(REV6, "PTR")] = ["v6.example.test"]
    dns_server.zone[("v6.example.test", "A")] = ["127.0.0.1"]
    dns_server.zone[("v6.example.test", "AAAA")] = ["2001:db8:0::5"]
    assert fcrdns(V6, timeout=2) == "v6.example.test"
    assert ("v6.example.test", "AAAA") in [q[:2] for q in dns_server.queries]


def test_fcrdns_timeout(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(REV4, "PTR")] = ["slow.example.test"]
    dns_server.zone[("slow.example.test", "A")] = ["127.0.0.1"]
    dns_server.delay = 0.25
    start = time.monotonic()
    assert fcrdns("127.0.0.1", timeout=0.4) is None  # PTR in time, the A lookup not
    assert time.monotonic() - start < 0.8
