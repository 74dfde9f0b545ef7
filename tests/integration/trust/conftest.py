"""Fixtures for the trust tests: DNSSEC-flagged DNS, MX peers with chosen certificates, MTA-STS over HTTPS.

* :class:`SecureDNSServer`: the test DNS server of ``tests.integration.dns``
  that also sets the AD bit for names listed in ``secure`` (as a validating
  resolver would) and serves TLSA records (``"3 1 1 <hex>"``).
* ``mx_peer``: scripted SMTP servers on loopback offering STARTTLS with a
  certificate issued by the trusted CA for the right name, the wrong name,
  by an unknown CA, or no STARTTLS at all; ``stripping_proxy`` sits in front
  of one and removes STARTTLS from its EHLO reply (a downgrade attacker).
* ``sts_server``: an HTTPS server (gevent pywsgi, trustme certificate for
  ``mta-sts.<domain>``) serving a policy, or misbehaving on request.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import gevent
import gevent.ssl
import pytest
import trustme
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from slimta.util.dns import DNSResolver
from tests.integration.dns.server import DNSTestServer
from tests.integration.relay.conftest import STOP, ScriptedServer, aiosmtpd_server, smtp_dialogue

__all__ = ["aiosmtpd_server"]

MX = "mx.example.test"
DOMAIN = "example.test"


class SecureDNSServer(DNSTestServer):
    """Sets AD on answers for the names in :attr:`secure` (lower case, no dot)."""

    secure: set[str]

    def _answer(self, query: dns.message.Message, transport: str) -> bytes | None:
        wire = super()._answer(query, transport)
        if wire is None or not query.question:
            return wire
        name = query.question[0].name.to_text().lower().rstrip(".")
        if name not in self.secure:
            return wire
        response = dns.message.from_wire(wire)
        response.flags |= dns.flags.AD
        return response.to_wire(want_shuffle=False)


@pytest.fixture
def secure_dns() -> Iterator[SecureDNSServer]:
    """The DNS server, made the default resolver (0.5 s tries) for the test."""
    server = SecureDNSServer()
    server.secure = set()
    server.start()
    resolver = DNSResolver(servers=[server.address], timeout=0.5, tries=1)
    previous = DNSResolver.set_default(resolver)
    try:
        yield server
    finally:
        DNSResolver.set_default(previous)
        resolver.close()
        server.stop()


@pytest.fixture(scope="session")
def trust_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def rogue_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusting(trust_ca: trustme.CA) -> ssl.SSLContext:
    """A client context trusting only the test CA."""
    ctx = ssl.create_default_context()
    trust_ca.configure_trust(ctx)
    return ctx


def server_context(cert: trustme.LeafCert, root: trustme.CA | None = None) -> ssl.SSLContext:
    """A server context for ``cert``; with ``root``, the chain sent ends with it (DANE-TA needs that)."""
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if root is None:
        cert.configure_cert(ctx)
        return ctx
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as pem:
        pem.write(cert.private_key_and_cert_chain_pem.bytes() + root.cert_pem.bytes())
        pem.flush()
        ctx.load_cert_chain(pem.name)
    return ctx


def spki_sha256(cert: trustme.LeafCert | trustme.CA) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = cert.cert_chain_pems[0].bytes() if isinstance(cert, trustme.LeafCert) else cert.cert_pem.bytes()
    key = x509.load_pem_x509_certificate(pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def cert_sha256(cert: trustme.CA) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.cert_pem.bytes().decode())).hexdigest()


def ehlo_lines(starttls: bool, requiretls: bool = False) -> bytes:
    extra = (b"250-STARTTLS\r\n" if starttls else b"") + (b"250-REQUIRETLS\r\n" if requiretls else b"")
    return b"250-mx.example.test\r\n250-PIPELINING\r\n" + extra + b"250 ENHANCEDSTATUSCODES\r\n"


def _peer_script(ctx: ssl.SSLContext | None, requiretls: bool) -> Callable[[Any], None]:
    def script(conn: Any) -> None:
        # EHLO before STARTTLS offers it; EHLO after the handshake does not.
        state = {"tls": False}

        def ehlo(c: Any, line: bytes) -> None:
            c.send(ehlo_lines(ctx is not None and not state["tls"], requiretls and state["tls"]))

        def starttls(c: Any, line: bytes) -> Any:
            if ctx is None:
                c.send(b"502 5.5.1 no\r\n")
                return None
            c.send(b"220 2.0.0 go ahead\r\n")
            if not c.starttls(ctx):
                return STOP
            state["tls"] = True
            c.server.tls_sessions += 1
            return None

        smtp_dialogue(conn, replies={b"EHLO": ehlo, b"STARTTLS": starttls})

    return script


@pytest.fixture
def mx_peer(trust_ca: trustme.CA, rogue_ca: trustme.CA) -> Iterator[Callable[..., ScriptedServer]]:
    """Start an MX: ``mx_peer("good" | "wrong-name" | "rogue" | "none", requiretls=False)``."""
    servers: list[ScriptedServer] = []
    certs = {
        "good": lambda: trust_ca.issue_cert(MX, "mx2.example.test"),
        "wrong-name": lambda: trust_ca.issue_cert("other.invalid"),
        "rogue": lambda: rogue_ca.issue_cert(MX),
    }

    def start(
        kind: str = "good", requiretls: bool = False, host: str = "127.0.0.1", full_chain: bool = False
    ) -> ScriptedServer:
        leaf = certs[kind]() if kind != "none" else None
        root = (rogue_ca if kind == "rogue" else trust_ca) if full_chain else None
        ctx = server_context(leaf, root) if leaf is not None else None
        server = ScriptedServer(_peer_script(ctx, requiretls), host=host)
        server.leaf = leaf  # type: ignore[attr-defined]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class StrippingProxy:
    """Forwards to ``upstream`` but hides STARTTLS and refuses it (a MITM)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.stripped = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[0], self.server.address[1]

    def _handle(self, client: Any, _addr: Any) -> None:
        up = gevent.socket.create_connection(self.upstream, timeout=5)
        pump = gevent.spawn(self._down, up, client)
        try:
            buf = b""
            while True:
                data = client.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    if line.upper().startswith(b"STARTTLS"):
                        client.sendall(b"454 4.7.0 TLS not available\r\n")
                    else:
                        up.sendall(line + b"\r\n")
        except OSError:
            return
        finally:
            pump.kill()
            up.close()

    def _down(self, up: Any, client: Any) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = up.recv(65536)
                if not data:
                    client.close()
                    return
                if b"STARTTLS" in data:
                    self.stripped += 1
                    data = data.replace(b"250-STARTTLS\r\n", b"")
                client.sendall(data)

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def stripping_proxy() -> Iterator[Callable[[tuple[str, int]], StrippingProxy]]:
    proxies: list[StrippingProxy] = []

    def start(upstream: tuple[str, int]) -> StrippingProxy:
        proxy = StrippingProxy(upstream)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


class StsServer:
    """An HTTPS server for ``mta-sts.<domain>``; set ``body``, ``status``, ``delay``, ``content_type``."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.body = b""
        self.status = "200 OK"
        self.content_type = "text/plain"
        self.headers: list[tuple[str, str]] = []
        self.delay = 0.0
        self.requests = 0
        self.server = WSGIServer(("127.0.0.1", 0), self._app, ssl_context=server_context(cert), log=None)
        self.server.start()

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.requests += 1
        if self.delay:
            gevent.sleep(self.delay)
        start_response(self.status, [("Content-Type", self.content_type), *self.headers])
        return [self.body]

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def sts_server(trust_ca: trustme.CA) -> Iterator[StsServer]:
    server = StsServer(trust_ca.issue_cert(f"mta-sts.{DOMAIN}"))
    try:
        yield server
    finally:
        server.stop()
