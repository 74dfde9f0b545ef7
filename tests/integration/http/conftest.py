"""Fixtures for the HTTP edge and relay tests, over real loopback sockets.

* ``edge_factory(**kwargs)`` starts a :class:`WsgiEdge` on ``127.0.0.1:0``
  with a :class:`RecordingQueue`; every edge is killed at teardown.
* ``relay_factory(url, **kwargs)`` builds an :class:`HttpRelay` and kills
  its pool at teardown.
* ``ca`` / ``server_cert``: trustme certificates; ``stdlib_server_context``
  is a plain stdlib :class:`ssl.SSLContext` (the original class, even when
  the suite runs monkey-patched), ``gevent_server_context`` gevent's own;
  ``client_context`` (gevent's) and ``stdlib_client_context`` trust the CA.
* :func:`raw_request`: send bytes on a fresh socket, read the response.
* :class:`ScriptedServer`: a loopback HTTP server that answers every
  request with canned bytes (or not at all), for the relay's error mapping.
"""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.monkey
import gevent.server
import pytest
import trustme

from slimta.core import SlimtaError
from slimta.edge.wsgi import WsgiEdge, WsgiValidators
from slimta.envelope import Envelope
from slimta.relay.http import HttpRelay
from tests.integration.tls_fixtures import (  # noqa: F401 - fixtures
    ca,
    client_context,
    gevent_server_context,
    original_ssl_context_class,
    server_cert,
    stdlib_server_context,
)

HOSTNAME = "mx.http.test"


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def make_envelope(
    sender: str = "sender@example.com",
    recipients: tuple[str, ...] = ("rcpt@example.com",),
    body: bytes = b"Hello over HTTP.\r\n",
    subject: str = "test",
) -> Envelope:
    envelope = Envelope(sender, list(recipients))
    envelope.parse(b"From: " + sender.encode() + b"\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body)
    return envelope


@dataclass
class RecordingQueue:
    """Records every envelope; may refuse with an error or raise."""

    envelopes: list[Envelope] = field(default_factory=list)
    error: SlimtaError | None = None
    crash: bool = False

    def enqueue(self, envelope: Envelope) -> list[tuple[Any, Any]]:
        if self.crash:
            raise RuntimeError("queue bug")
        if self.error is not None:
            return [(envelope, self.error)]
        self.envelopes.append(envelope)
        return [(envelope, f"id{len(self.envelopes)}")]


class PortRecorder(WsgiValidators):
    """Records the client port of every request (one port = one connection)."""

    ports: list[int] = []

    def validate_ehlo(self, ehlo: str) -> None:
        self.ports.append(int(self.environ["REMOTE_PORT"]))


@dataclass
class EdgeHandle:
    edge: WsgiEdge
    queue: RecordingQueue

    @property
    def port(self) -> int:
        return int(self.edge.server.address[1])

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def url(self, scheme: str = "http", path: str = "/") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


@pytest.fixture
def edge_factory() -> Iterator[Callable[..., EdgeHandle]]:
    started: list[WsgiEdge] = []

    def factory(
        queue: RecordingQueue | None = None, edge_class: type[WsgiEdge] = WsgiEdge, **kwargs: Any
    ) -> EdgeHandle:
        queue = queue if queue is not None else RecordingQueue()
        kwargs.setdefault("hostname", HOSTNAME)
        kwargs.setdefault("listener", ("127.0.0.1", 0))
        edge = edge_class(queue, **kwargs)
        edge.start()
        started.append(edge)
        gevent.sleep(0)
        return EdgeHandle(edge, queue)

    yield factory
    for edge in started:
        edge.kill(block=True, timeout=2)


@pytest.fixture
def edge(edge_factory: Callable[..., EdgeHandle]) -> EdgeHandle:
    return edge_factory()


@pytest.fixture
def relay_factory() -> Iterator[Callable[..., HttpRelay]]:
    relays: list[HttpRelay] = []

    def factory(url: str, **kwargs: Any) -> HttpRelay:
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("ehlo_as", "client.http.test")
        relay = HttpRelay(url, **kwargs)
        relays.append(relay)
        return relay

    yield factory
    for relay in relays:
        relay.kill()


# -- TLS -------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_hostname() -> str:
    return HOSTNAME


@pytest.fixture
def stdlib_client_context(ca: trustme.CA) -> ssl.SSLContext:  # noqa: F811
    ctx = original_ssl_context_class()(ssl.PROTOCOL_TLS_CLIENT)
    with ca.cert_pem.tempfile() as path:
        ctx.load_verify_locations(path)
    assert type(ctx).__module__ == "ssl"
    return ctx


# -- raw clients and servers ---------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool


def read_response(sock: Any, timeout: float = 5.0) -> RawResponse:
    """Read one HTTP response (Content-Length framed or none) from ``sock``."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    closed = False
    if headers.get("connection", "").lower() == "close":
        try:
            closed = sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed = True
    return RawResponse(status, headers, rest[:length], closed)


def raw_request(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> RawResponse:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout)


def post_bytes(
    path: str = "/",
    sender: str | None = "sender@example.com",
    recipients: tuple[str, ...] | None = ("rcpt@example.com",),
    body: bytes = b"Subject: raw\r\n\r\nraw body\r\n",
    extra: tuple[str, ...] = (),
    content_length: int | None = None,
    method: str = "POST",
) -> bytes:
    """A complete HTTP/1.1 request for the edge, as bytes."""
    lines = [f"{method} {path} HTTP/1.1", "Host: edge", "Content-Type: message/rfc822"]
    if sender is not None:
        lines.append(f"X-Envelope-Sender: {b64(sender)}")
    lines.extend(f"X-Envelope-Recipient: {b64(rcpt)}" for rcpt in recipients or ())
    lines.extend(extra)
    lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ScriptedServer:
    """Answers every HTTP request with ``response`` (``None``: never answers)."""

    def __init__(self, response: bytes | None) -> None:
        self.response = response
        self.requests = 0
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.address[1]}/"

    def _handle(self, sock: Any, address: Any) -> None:
        buf = b""
        sock.settimeout(10)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(buf) < length:
                    buf += sock.recv(65536)
                buf = buf[length:]
                self.requests += 1
                if self.response is None:
                    gevent.sleep(30)
                    return
                sock.sendall(self.response)
        except OSError:
            return

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def scripted() -> Iterator[Callable[[bytes | None], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def factory(response: bytes | None) -> ScriptedServer:
        server = ScriptedServer(response)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
