"""Fixtures for relay tests: real SMTP peers on loopback.

* :class:`ScriptedServer`: a gevent StreamServer that runs one scripted
  SMTP dialogue per connection (:func:`smtp_dialogue`), with hooks to
  misbehave at any step; it records every line received and every message.
* ``aiosmtpd_server``: aiosmtpd in a subprocess (gevent.subprocess) that
  writes each message it receives into a directory.
* ``edge_factory`` and the trustme certificates come from the edge tests.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.ssl
import pytest
from gevent import subprocess
from gevent.server import StreamServer

from slimta.envelope import Envelope
from tests.integration.dns.server import dns_resolver, dns_server
from tests.integration.edge.conftest import (
    HOSTNAME,
    RecordingQueue,
    ca,
    client_context,
    edge,
    edge_factory,
    gevent_server_context,
    server_cert,
    stdlib_server_context,
    tls_hostname,
)

__all__ = [
    "HOSTNAME",
    "Conn",
    "RecordingQueue",
    "ScriptedServer",
    "ca",
    "client_context",
    "dns_resolver",
    "dns_server",
    "edge",
    "edge_factory",
    "gevent_server_context",
    "make_envelope",
    "server_cert",
    "smtp_dialogue",
    "stdlib_server_context",
    "tls_hostname",
]

STOP = object()


def make_envelope(
    sender: str = "sender@src.test",
    recipients: list[str] | None = None,
    body: bytes = b"hello\r\n",
    **headers: str,
) -> Envelope:
    env = Envelope(sender, recipients or ["rcpt@dst.test"])
    head = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    env.parse(b"Subject: test\r\n" + head.encode() + b"\r\n" + body)
    return env


class Conn:
    """One server-side connection: line reads with a timeout, raw sends."""

    def __init__(self, sock: Any, server: ScriptedServer) -> None:
        self.sock = sock
        self.server = server
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (OSError, ssl.SSLError):
            return False
        if not data:
            return False
        self.buf += data
        return True

    def readline(self, timeout: float = 5.0) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill(timeout):
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        self.server.lines.append(line)
        return line

    def read_exact(self, size: int, timeout: float = 5.0) -> bytes | None:
        while len(self.buf) < size:
            if not self._fill(timeout):
                return None
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def read_data(self, timeout: float = 5.0) -> bytes | None:
        while b"\r\n.\r\n" not in b"\r\n" + self.buf:
            if not self._fill(timeout):
                return None
        joined = b"\r\n" + self.buf
        end = joined.index(b"\r\n.\r\n")
        data = joined[2 : end + 2]
        self.buf = joined[end + 5 :]
        return data

    def starttls(self, context: ssl.SSLContext) -> bool:
        self.buf = b""
        try:
            self.sock = gevent.ssl.SSLSocket(sock=self.sock, server_side=True, _context=context)
        except (OSError, ssl.SSLError):
            return False
        return True


EHLO_DEFAULT = b"250-scripted.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"


def smtp_dialogue(  # noqa: C901 - one branch per SMTP verb
    conn: Conn,
    *,
    banner: bytes = b"220 scripted.test ESMTP\r\n",
    ehlo: bytes = EHLO_DEFAULT,
    replies: dict[bytes, Any] | None = None,
    final: bytes = b"250 2.0.0 Ok queued\r\n",
    tls_context: ssl.SSLContext | None = None,
) -> None:
    """A minimal SMTP server; ``replies`` overrides a verb with bytes or a function.

    A function gets ``(conn, line)`` and returns :data:`STOP` to end the session.
    """
    replies = replies or {}
    conn.send(banner)
    if not banner.startswith(b"2"):
        return
    while True:
        line = conn.readline()
        if line is None:
            return
        verb = line.split(b" ", 1)[0].upper()
        custom = replies.get(verb)
        if callable(custom):
            if custom(conn, line) is STOP:
                return
            continue
        if custom is not None:
            conn.send(custom)
            if verb == b"QUIT" or custom.startswith(b"421"):
                return
            continue
        if verb in (b"EHLO", b"LHLO"):
            conn.send(ehlo)
        elif verb == b"STARTTLS" and tls_context is not None:
            conn.send(b"220 2.0.0 go ahead\r\n")
            if not conn.starttls(tls_context):
                return
            conn.server.tls_sessions += 1
        elif verb == b"DATA":
            conn.send(b"354 go on\r\n")
            data = conn.read_data()
            if data is None:
                return
            conn.server.messages.append(data)
            conn.send(final)
        elif verb == b"BDAT":
            size = int(line.split()[1])
            chunk = conn.read_exact(size)
            if chunk is None:
                return
            conn.server.messages.append(chunk)
            conn.send(final)
        elif verb == b"QUIT":
            conn.send(b"221 2.0.0 bye\r\n")
            return
        else:
            conn.send(b"250 2.0.0 Ok\r\n")


class ScriptedServer:
    """A loopback server that runs ``script(conn)`` for every connection."""

    def __init__(self, script: Callable[[Conn], None], host: str = "127.0.0.1", port: int = 0) -> None:
        self.script = script
        self.lines: list[bytes] = []
        self.messages: list[bytes] = []
        self.connections = 0
        self.tls_sessions = 0
        self.server = StreamServer((host, port), self._handle)
        self.server.start()

    @property
    def address(self) -> tuple[str, int]:
        address: Any = self.server.address
        return str(address[0]), int(address[1])

    def _handle(self, sock: Any, _address: Any) -> None:
        self.connections += 1
        conn = Conn(sock, self)
        try:
            self.script(conn)
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()

    def stop(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Callable[[Conn], None] | None = None, **kwargs: Any) -> ScriptedServer:
        if script is None:
            dialogue_kwargs = kwargs
            server = ScriptedServer(lambda conn: smtp_dialogue(conn, **dialogue_kwargs))
        else:
            server = ScriptedServer(script, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_AIOSMTPD_SCRIPT = r"""
import sys, time, pathlib
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
out = pathlib.Path(sys.argv[2])
class Handler:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        Handler.count += 1
        name = out / f"{Handler.count:05d}.eml"
        name.write_bytes(("|".join([envelope.mail_from] + envelope.rcpt_tos) + "\n").encode()
                         + envelope.original_content)
        return "250 2.0.0 stored"
ctrl = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]),
                  enable_SMTPUTF8=True, decode_data=False)
ctrl.start()
print("READY", flush=True)
sys.stdin.read()
ctrl.stop()
"""


class AiosmtpdPeer:
    def __init__(self, port: int, outdir: Path, proc: Any) -> None:
        self.address = ("127.0.0.1", port)
        self.outdir = outdir
        self.proc = proc

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.outdir.glob("*.eml"))]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages()
            if len(found) >= count:
                return found
            gevent.sleep(0.05)
        return self.messages()


@pytest.fixture
def aiosmtpd_server(tmp_path: Path) -> Iterator[AiosmtpdPeer]:
    port = free_port()
    outdir = tmp_path / "aiosmtpd"
    outdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _AIOSMTPD_SCRIPT, str(port), str(outdir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        with gevent.Timeout(10):
            assert proc.stdout is not None
            line = proc.stdout.readline()
        assert line.startswith(b"READY"), line
        yield AiosmtpdPeer(port, outdir, proc)
    finally:
        proc.kill()
        proc.wait()
