"""A small authoritative DNS server for tests, built with dnspython.

It answers on 127.0.0.1 with an ephemeral port, over UDP and over TCP on the
same port number, from a zone the test writes as a plain dict. It runs in
greenlets with gevent sockets, so a resolver that blocked the hub could not
be answered at all: every test that uses it also checks that it does not.

Zone format (keys are case-insensitive; a trailing dot is optional)::

    {
        ("example.test", "MX"): [(10, "mx1.example.test"), (20, "mx2.example.test")],
        ("mx1.example.test", "A"): ["127.0.0.2"],
        ("mx1.example.test", "AAAA"): ["::1"],
        ("example.test", "TXT"): ["v=spf1 -all"],  # or a tuple of chunks
        ("2.0.0.127.in-addr.arpa", "PTR"): ["mx1.example.test"],
        ("alias.test", "CNAME"): ["mx1.example.test"],  # followed for other types
        ("nullmx.test", "MX"): [(0, ".")],  # RFC 7505 null MX
        ("broken.test", "MX"): SERVFAIL,  # a mode for one type...
        "dead.test": DROP,  # ...or for every type of a name
        ("big.test", "MX"): Truncated([(10, "mx1.example.test")]),
    }

Modes: :data:`SERVFAIL`, :data:`NXDOMAIN`, :data:`NODATA` (NOERROR, empty
answer), :data:`DROP` (no reply at all, so the client times out) and
:class:`Truncated` (an empty UDP reply with the TC bit; the records are
served over TCP only). Records go out in the order given (no shuffling).
A name that appears nowhere in the zone gets NXDOMAIN;
a name that has other types but not the one asked gets NODATA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import gevent
import gevent.socket
import pytest

from slimta.util.dns import DNSResolver

__all__ = [
    "DROP",
    "NODATA",
    "NXDOMAIN",
    "SERVFAIL",
    "DNSTestServer",
    "Truncated",
    "dns_resolver",
    "dns_server",
]

SERVFAIL = "SERVFAIL"
NXDOMAIN = "NXDOMAIN"
NODATA = "NODATA"
DROP = "DROP"


@dataclass(frozen=True)
class Truncated:
    """Records that are only served over TCP: UDP gets an empty TC reply."""

    records: list[Any]


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _rdata_text(rtype: str, value: Any) -> str:
    if rtype == "MX":
        pref, host = value
        return f"{pref} {_absolute(host)}"
    if rtype in ("CNAME", "PTR", "NS"):
        return _absolute(value)
    if rtype == "TXT":
        chunks = value if isinstance(value, tuple) else (value,)
        return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return str(value)


def _absolute(host: str) -> str:
    return host if host.endswith(".") else host + "."


@dataclass
class DNSTestServer:
    """The server behind the ``dns_server`` fixture.

    Attributes:
        zone: The records served; tests may change it at any time.
        queries: Every query received, as ``(name, type, "udp" | "tcp")``.
        delay: Seconds to wait before each reply (not for DROP).
        ttl: TTL of every record served. The default 0 keeps c-ares from
            caching answers, so a test may change ``zone`` between lookups.
    """

    zone: dict[Any, Any] = field(default_factory=dict)
    queries: list[tuple[str, str, str]] = field(default_factory=list)
    delay: float = 0.0
    ttl: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    _udp: Any = None
    _tcp: Any = None
    _greenlets: list[gevent.Greenlet[Any, Any]] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        """``(ip, port)``: pass it to ``DNSResolver(servers=[...])``."""
        return (self.host, self.port)

    def start(self) -> None:
        """Bind UDP and TCP on one ephemeral port and start serving."""
        for _ in range(20):
            udp = gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            port = udp.getsockname()[1]
            tcp = gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_STREAM)
            tcp.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(64)
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:  # pragma: no cover
            raise RuntimeError("no free port for both UDP and TCP")
        self._greenlets = [gevent.spawn(self._serve_udp), gevent.spawn(self._serve_tcp)]

    def stop(self) -> None:
        """Stop serving and close the sockets."""
        gevent.killall(self._greenlets, block=True, timeout=2)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()

    # -- answering ---------------------------------------------------------

    def _lookup(self, name: str, rtype: str) -> Any:
        by_type = self.zone.get((name, rtype))
        if by_type is None:
            for key, value in self.zone.items():
                if isinstance(key, tuple) and _norm(key[0]) == name and key[1].upper() == rtype:
                    by_type = value
                    break
        if by_type is not None:
            return by_type
        for key, value in self.zone.items():
            if isinstance(key, str) and _norm(key) == name:
                return value
        if any(isinstance(k, tuple) and _norm(k[0]) == name for k in self.zone):
            return NODATA
        return NXDOMAIN

    def _answer(self, query: dns.message.Message, transport: str) -> bytes | None:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire(want_shuffle=False)
        question = query.question[0]
        name = _norm(question.name.to_text())
        rtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rtype, transport))
        for _ in range(8):  # follow CNAMEs inside the zone
            value = self._lookup(name, rtype)
            if value == NODATA and rtype != "CNAME":
                cname = self._lookup(name, "CNAME")
                if isinstance(cname, list) and cname:
                    target = _absolute(cname[0])
                    response.answer.append(
                        dns.rrset.from_text(_absolute(name), self.ttl, "IN", "CNAME", target)
                    )
                    name = _norm(target)
                    continue
            break
        if isinstance(value, Truncated):
            if transport == "udp":
                response.flags |= dns.flags.TC
                return response.to_wire(want_shuffle=False)
            value = value.records
        if value == DROP:
            return None
        if value == SERVFAIL:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif value == NXDOMAIN:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif value == NODATA or not value:
            pass
        else:
            texts = [_rdata_text(rtype, v) for v in value]
            response.answer.append(dns.rrset.from_text_list(_absolute(name), self.ttl, "IN", rtype, texts))
        return response.to_wire(want_shuffle=False)

    def _reply(self, data: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        if self.delay:
            gevent.sleep(self.delay)
        return self._answer(query, transport)

    def _serve_udp(self) -> None:
        while True:
            data, peer = self._udp.recvfrom(65535)
            gevent.spawn(self._udp_one, data, peer)

    def _udp_one(self, data: bytes, peer: Any) -> None:
        wire = self._reply(data, "udp")
        if wire is not None:
            with contextlib.suppress(OSError):
                self._udp.sendto(wire, peer)

    def _serve_tcp(self) -> None:
        while True:
            conn, _ = self._tcp.accept()
            gevent.spawn(self._tcp_conn, conn)

    def _tcp_conn(self, conn: Any) -> None:
        conn.settimeout(5)
        try:
            with conn:
                while True:
                    head = self._recv_exact(conn, 2)
                    if head is None:
                        return
                    data = self._recv_exact(conn, int.from_bytes(head, "big"))
                    if data is None:
                        return
                    wire = self._reply(data, "tcp")
                    if wire is not None:
                        conn.sendall(len(wire).to_bytes(2, "big") + wire)
        except OSError:
            return

    @staticmethod
    def _recv_exact(conn: Any, size: int) -> bytes | None:
        buf = b""
        while len(buf) < size:
            chunk = conn.recv(size - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf


@pytest.fixture
def dns_server() -> Iterator[DNSTestServer]:
    """A running :class:`DNSTestServer` with an empty zone; fill ``.zone``."""
    server = DNSTestServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_resolver(dns_server: DNSTestServer) -> Iterator[DNSResolver]:
    """Make the default :class:`DNSResolver` ask ``dns_server``, then restore it.

    Code that calls ``DNSResolver.query(...)`` or the module helpers (the MX
    relay, DNSBL, SPF) then talks to the test server. Timeouts are short so
    that DROP cases finish quickly: 0.5 s per try, one try.
    """
    resolver = DNSResolver(servers=[dns_server.address], timeout=0.5, tries=1)
    previous = DNSResolver.set_default(resolver)
    try:
        yield resolver
    finally:
        DNSResolver.set_default(previous)
        resolver.close()
