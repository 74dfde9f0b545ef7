"""An SmtpEdge with a PROXY protocol mixin, and a bounded raw client for it."""

from __future__ import annotations

import socket
import struct
from typing import Any

import gevent

from slimta.edge.smtp import SmtpEdge, SmtpValidators

__all__ = [
    "EdgeUnderTest",
    "connect",
    "drain",
    "inet4",
    "inet6",
    "read_line",
    "read_until_closed",
    "v2_header",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class Queue:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    def enqueue(self, envelope: Any) -> list[tuple[Any, Any]]:
        self.envelopes.append(envelope)
        return [(envelope, str(len(self.envelopes)))]


class EdgeUnderTest:
    def __init__(self, mixin: Any, **mixin_kwargs: Any) -> None:
        self.banners: list[Any] = []
        self.queue = Queue()
        banners = self.banners

        class Validators(SmtpValidators):
            def handle_banner(self, reply: Any, address: Any) -> None:
                banners.append(address)

        self.edge = SmtpEdge(
            ("127.0.0.1", 0), self.queue, validator_class=Validators, hostname="mx.test", command_timeout=10
        )
        mixin.mixin(self.edge, **mixin_kwargs)
        self.edge.start()
        gevent.sleep(0)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", int(self.edge.server.address[1]))


def connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    """Read one CRLF-terminated line (byte by byte: a test helper); b"" at EOF."""
    line = b""
    while not line.endswith(b"\r\n") and len(line) < limit:
        byte = sock.recv(1)
        if not byte:
            return line
        line += byte
    return line


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything until EOF; a reset counts as EOF."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def drain(sock: socket.socket) -> None:
    """Read until EOF; a reset is raised."""
    while sock.recv(65536):
        pass


def v2_header(
    command: int = 1, family: int = 0x11, addresses: bytes = b"", tlvs: bytes = b"", length: int | None = None
) -> bytes:
    body = addresses + tlvs
    size = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, size) + body


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + struct.pack("!HH", sport, dport)
    )
