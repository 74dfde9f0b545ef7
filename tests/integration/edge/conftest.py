"""Fixtures for SmtpEdge integration tests over real loopback sockets.

* ``edge_factory(**kwargs)`` starts an :class:`SmtpEdge` on ``127.0.0.1:0``
  with a :class:`RecordingQueue` and a validator class that records every
  hook call; the edge is killed at teardown.
* ``ca`` / ``server_cert``: trustme certificates; ``stdlib_server_context``
  is a plain stdlib :class:`ssl.SSLContext` (the original class, even when
  the suite runs monkey-patched), ``gevent_server_context`` gevent's own;
  ``client_context`` trusts the CA.
* :class:`RawClient`: a loopback socket with a timeout on every read, which
  reads whole SMTP replies and keeps whatever follows for the next read.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.monkey
import pytest
import trustme

from slimta.core import SlimtaError
from slimta.edge.smtp import SmtpEdge, SmtpValidators
from tests.integration.tls_fixtures import (  # noqa: F401 - fixtures
    ca,
    client_context,
    gevent_server_context,
    original_ssl_context_class,
    server_cert,
    stdlib_server_context,
)

HOSTNAME = "mx.edge.test"
_REPLY_END = re.compile(rb"(?:\A|\r\n)([0-9]{3}) [^\r\n]*\r\n")


class QueueRefused(SlimtaError):
    """A stand-in for slimta.queue.QueueError: optionally carries a reply."""

    def __init__(self, reply: Any = None) -> None:
        super().__init__("refused")
        self.reply = reply


@dataclass
class RecordingQueue:
    """Records every envelope; may block on a gate or refuse with an error."""

    envelopes: list[Any] = field(default_factory=list)
    gate: gevent.event.Event | None = None
    error: SlimtaError | None = None
    #: Set once enqueue() was entered (before the gate).
    entered: gevent.event.Event = field(default_factory=gevent.event.Event)

    def enqueue(self, envelope: Any) -> list[tuple[Any, Any]]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.error is not None:
            return [(envelope, self.error)]
        self.envelopes.append(envelope)
        return [(envelope, f"id{len(self.envelopes)}")]


def recording_validators(calls: list[tuple[Any, ...]], overrides: dict[str, Any] | None = None) -> type:
    """A SmtpValidators subclass that appends ``(hook, args...)`` to ``calls``.

    ``overrides`` maps a hook name (``"mail"``) to a function
    ``f(validators, reply, *args)`` run after recording.
    """
    overrides = overrides or {}

    def make(name: str) -> Callable[..., None]:
        def hook(self: SmtpValidators, *args: Any) -> None:
            calls.append((name, *args))
            if name in overrides:
                overrides[name](self, *args)

        return hook

    names = ["banner", "ehlo", "helo", "tls", "tls2", "mail", "rcpt", "data", "have_data", "queued", "rset"]
    namespace: dict[str, Any] = {f"handle_{n}": make(n) for n in names}
    if "auth" in overrides:
        namespace["handle_auth"] = make("auth")
    return type("RecordingValidators", (SmtpValidators,), namespace)


@dataclass
class EdgeHandle:
    edge: SmtpEdge
    queue: RecordingQueue
    calls: list[tuple[Any, ...]]

    @property
    def port(self) -> int:
        return int(self.edge.server.address[1])

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def hooks(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture
def edge_factory() -> Iterator[Callable[..., EdgeHandle]]:
    started: list[SmtpEdge] = []

    def factory(
        queue: RecordingQueue | None = None,
        overrides: dict[str, Any] | None = None,
        validator_class: Any = "record",
        **kwargs: Any,
    ) -> EdgeHandle:
        queue = queue if queue is not None else RecordingQueue()
        calls: list[tuple[Any, ...]] = []
        if validator_class == "record":
            validator_class = recording_validators(calls, overrides)
        kwargs.setdefault("hostname", HOSTNAME)
        kwargs.setdefault("command_timeout", 10)
        kwargs.setdefault("data_timeout", 10)
        listener = kwargs.pop("listener", ("127.0.0.1", 0))
        edge = SmtpEdge(listener, queue, validator_class=validator_class, **kwargs)
        edge.start()
        started.append(edge)
        gevent.sleep(0)
        return EdgeHandle(edge, queue, calls)

    yield factory
    for edge in started:
        edge.kill(block=True, timeout=2)


@pytest.fixture
def edge(edge_factory: Callable[..., EdgeHandle]) -> EdgeHandle:
    return edge_factory()


# -- TLS -------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_hostname() -> str:
    return HOSTNAME


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


# -- raw socket client ---------------------------------------------------------


class RawClient:
    """A loopback SMTP client that speaks bytes; every read is bounded."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock: Any = socket.create_connection(address, timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.recv_calls = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.recv_calls += 1
        if not data:
            return False
        self.buf += data
        return True

    def reply(self) -> tuple[int, bytes]:
        """Read one complete (possibly multi-line) reply: ``(code, text)``."""
        while True:
            match = _REPLY_END.search(self.buf)
            if match:
                whole, self.buf = self.buf[: match.end()], self.buf[match.end() :]
                return int(match.group(1)), whole
            if not self._fill():
                raise ConnectionError(f"closed by server; pending {self.buf!r}")

    def replies(self, n: int) -> list[tuple[int, bytes]]:
        return [self.reply() for _ in range(n)]

    def codes(self, n: int) -> list[int]:
        return [code for code, _ in self.replies(n)]

    def expect(self, code: int) -> bytes:
        got, text = self.reply()
        assert got == code, text
        return text

    def ehlo(self, name: str = "client.test") -> bytes:
        self.send(b"EHLO " + name.encode() + b"\r\n")
        return self.expect(250)

    def closed_by_server(self, timeout: float = 3.0) -> bool:
        """True if the server closes (EOF or reset) within ``timeout``."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            try:
                if not self._fill():
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
        return False

    def starttls(self, context: ssl.SSLContext, server_hostname: str = HOSTNAME) -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client() -> Iterator[Callable[..., RawClient]]:
    clients: list[RawClient] = []

    def connect(address: tuple[str, int], timeout: float = 5.0, banner: bool = True) -> RawClient:
        client = RawClient(address, timeout)
        clients.append(client)
        if banner:
            client.expect(220)
        return client

    yield connect
    for client in clients:
        client.close()
