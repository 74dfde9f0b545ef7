"""The DNS checks as SmtpValidators decorators on a real SmtpEdge, and against a broken DNS server."""

from __future__ import annotations

import contextlib
import smtplib
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import gevent
import gevent.socket
import pytest

from slimta.edge.smtp import SmtpEdge, SmtpValidators
from slimta.smtp.reply import Reply
from slimta.util.dns import DNSResolver
from slimta.util.dnsbl import DnsBlocklist, DnsBlocklistGroup, check_dnsbl
from slimta.util.ptrlookup import PtrLookup, fcrdns
from slimta.util.spf import EnforceSpf
from tests.integration.dns.server import SERVFAIL, DNSTestServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]


class Queue:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    def enqueue(self, envelope: Any) -> list[tuple[Any, Any]]:
        self.envelopes.append(envelope)
        return [(envelope, f"id{len(self.envelopes)}")]


def make_validators(spf: EnforceSpf) -> type[SmtpValidators]:
    class Validators(SmtpValidators):
        @spf.check
        def handle_mail(self, reply: Reply, sender: str, params: dict[str, Any]) -> None:
            pass

        @check_dnsbl("bl.test", match_code="554", match_message="5.7.1 Listed", timeout=2.0)
        def handle_rcpt(self, reply: Reply, recipient: str, params: dict[str, Any]) -> None:
            if recipient.startswith("nobody@"):
                reply.code = "550"
                reply.message = "5.1.1 Unknown user"

    return Validators


@pytest.fixture
def edge_port(dns_resolver: DNSResolver) -> Iterator[tuple[int, Queue]]:
    spf = EnforceSpf(timeout=2.0)
    spf.set_enforcement("fail", match_code="550", match_message="5.7.23 SPF fail: {reason}")
    spf.set_enforcement("temperror", match_code="451", match_message="4.7.24 SPF temperror")
    spf.set_enforcement("softfail", match_code="550", match_message="5.7.23 {unknown} braces")
    queue = Queue()
    edge = SmtpEdge(("127.0.0.1", 0), queue, validator_class=make_validators(spf), hostname="mx.test")
    edge.start()
    gevent.sleep(0)
    try:
        yield int(edge.server.address[1]), queue
    finally:
        edge.kill(block=True, timeout=2)


def test_edge_with_spf_and_dnsbl(dns_server: DNSTestServer, edge_port: tuple[int, Queue]) -> None:
    port, _ = edge_port
    dns_server.zone[("good.test", "TXT")] = ["v=spf1 ip4:127.0.0.0/8 -all"]
    dns_server.zone[("bad.test", "TXT")] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    dns_server.zone[("soft.test", "TXT")] = ["v=spf1 ~all"]
    dns_server.zone[("broken.test", "TXT")] = SERVFAIL
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.ehlo("client.test")
        assert client.mail("a@good.test") == (250, b"2.1.0 Sender <a@good.test> Ok")
        assert client.rcpt("b@dst.test")[0] == 250  # not listed
        assert client.rcpt("nobody@dst.test")[0] == 550  # the hook still runs
        client.rset()
        code, message = client.mail("a@bad.test")
        assert code == 550
        assert message == b"5.7.23 SPF fail: bad.test: -all matched 127.0.0.1"
        assert client.mail("a@broken.test") == (451, b"4.7.24 SPF temperror")
        assert client.mail("a@soft.test") == (550, b"5.7.23 {unknown} braces")
        assert client.mail("a@nospf.test")[0] == 250  # none: not enforced
        dns_server.zone[("1.0.0.127.bl.test", "A")] = ["127.0.0.2"]
        assert client.rcpt("b@dst.test") == (554, b"5.7.1 Listed")
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.ehlo("client.test")
        assert client.mail("")[0] == 250  # null sender: the HELO name has no SPF record


def fake(address: Any, ehlo_as: str | None = "client.test", envelope: Any = None) -> Any:
    return SimpleNamespace(session=SimpleNamespace(address=address, ehlo_as=ehlo_as, envelope=envelope))


def test_spf_check_reads_the_session(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("bad.test", "TXT")] = ["v=spf1 -all"]
    dns_server.zone[("client.test", "TXT")] = ["v=spf1 -all"]
    spf = EnforceSpf(timeout=2)
    spf.set_enforcement("FAIL")
    calls: list[tuple[Any, ...]] = []

    @spf.check
    def handle_rcpt(self: Any, reply: Reply, recipient: str, params: dict[str, Any]) -> str:
        calls.append((reply.code, recipient))
        return "ran"

    reply = Reply("250", "2.1.5 Ok")
    envelope = SimpleNamespace(sender="a@bad.test")
    assert handle_rcpt(fake(("127.0.0.1", 25), envelope=envelope), reply, "r@dst.test", {}) == "ran"
    assert (reply.code, reply.message) == ("550", "5.7.1 Access denied")
    assert calls == [("550", "r@dst.test")]  # enforced, then the hook runs (as in 4.0)

    reply = Reply("250", "2.1.5 Ok")
    handle_rcpt(fake(("127.0.0.1", 25), envelope=SimpleNamespace(sender="")), reply, "r@dst.test", {})
    assert reply.code == "550"  # null sender: the EHLO name's policy
    for session in (fake(None), fake(("unix",), envelope=envelope), fake((None, 0), envelope=envelope)):
        reply = Reply("250", "2.1.5 Ok")
        assert handle_rcpt(session, reply, "r@dst.test", {}) == "ran"
        assert reply.code == "250"
    with pytest.raises(ValueError, match="unknown SPF result"):
        spf.set_enforcement("maybe")


# -- a DNS server that answers with garbage ------------------------------------


@pytest.fixture
def garbage_resolver() -> Iterator[list[int]]:
    """Make the default resolver ask a server whose answers are malformed."""
    sock = gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    seen: list[int] = []

    def serve() -> None:
        while True:
            data, peer = sock.recvfrom(4096)
            seen.append(len(data))
            # A response header claiming one answer, then junk.
            junk = data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + b"\xff\x13\xc0" * 7
            with contextlib.suppress(OSError):
                sock.sendto(junk, peer)

    server = gevent.spawn(serve)
    resolver = DNSResolver(servers=[sock.getsockname()], timeout=0.3, tries=1)
    previous = DNSResolver.set_default(resolver)
    try:
        yield seen
    finally:
        DNSResolver.set_default(previous)
        resolver.close()
        server.kill(block=True, timeout=2)
        sock.close()


def test_malformed_answers(garbage_resolver: list[int]) -> None:
    start = time.monotonic()
    dnsbl = DnsBlocklist("bl.test")
    assert dnsbl.get("127.0.0.2", timeout=1) is False
    assert dnsbl.get("127.0.0.2", timeout=1, strict=True) is True
    assert dnsbl.get_reason("127.0.0.2", timeout=1) is None
    group = DnsBlocklistGroup()
    group.add_dnsbl("bl.test")
    group.add_dnsbl("bl2.test")
    assert group.get("::1", timeout=1) == set()
    assert group.get("::1", timeout=1, strict=True) == {"bl.test", "bl2.test"}
    assert EnforceSpf(timeout=1).query("a@example.test", "192.0.2.1", "h.test")[0] == "temperror"
    assert fcrdns("192.0.2.1", timeout=1) is None
    lookup = PtrLookup("192.0.2.1")
    lookup.start()
    assert lookup.finish(runtime=1) is None
    assert garbage_resolver  # the server was asked
    assert time.monotonic() - start < 8
