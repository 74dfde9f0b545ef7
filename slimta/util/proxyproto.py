"""The PROXY protocol (versions 1 and 2): serve behind HAProxy and keep the client's address.

A proxy that forwards TCP connections (HAProxy, nginx ``stream``, AWS
NLB, ...) hides the client: every connection seems to come from the proxy.
With the PROXY protocol the proxy starts each connection with a header
naming the original source and destination.  Mixing one of these classes
into an :class:`~slimta.edge.EdgeServer` makes its ``handle(socket,
address)`` read that header first and pass the *client's* address on, so
validators (``handle_banner``), block lists and ``Received`` headers see
the real source::

    edge = SmtpEdge(("0.0.0.0", 25), queue, validator_class=Validators)
    ProxyProtocol.mixin(edge)  # or ProxyProtocolV1 / ProxyProtocolV2
    edge.start()

Theory of operation
-------------------

The header is read straight from the socket before the edge sees it, and
*exactly* the header is consumed: the SMTP bytes a client pipelines behind
it stay in the kernel's receive buffer for the edge to read.  A version 1
line is found by peeking (``MSG_PEEK``) at what has arrived and then
receiving up to the CRLF and no further; version 2 declares its length, so
its 16 fixed octets and then that many more are received.

A connection is closed (the edge never runs) when its header is missing,
malformed, longer than allowed (107 octets for version 1, by the
specification; :attr:`~ProxyProtocolV2.proxyproto_max_v2_length` for the
variable part of version 2) or not complete within
:attr:`~ProxyProtocolV2.proxyproto_timeout` seconds.  Each of those is
logged by :meth:`slimta.logging.socket.SocketLogger.proxyproto_invalid`.
Bytes that cannot start a header stop the read at once: a client talking
SMTP straight at the edge is closed at its first byte, not after the
timeout.

Only a connection whose real origin the proxy does not know is given the
socket's own peer address (the proxy's): a version 1 ``UNKNOWN`` line, a
version 2 ``LOCAL`` command (what HAProxy sends for its health checks) and
a version 2 header with an unspecified address family.

.. versionchanged:: 0.1.0
   python-slimta passed ``(None, None)`` on to the edge for an invalid
   header and closed version 2 ``LOCAL`` connections.  Here an invalid
   header closes the connection -- a client must not be able to talk past
   the proxy's checks with an unknown address -- and ``LOCAL`` is served
   with the socket's peer address, so a proxy's SMTP health check gets
   its banner.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket as _socket
import struct
from typing import TYPE_CHECKING, Any

import gevent

from slimta.core import SlimtaError
from slimta.edge import EdgeServer
from slimta.logging import getSocketLogger

__all__ = [
    "InvalidProxyHeader",
    "LocalConnection",
    "ProxyProtocol",
    "ProxyProtocolError",
    "ProxyProtocolV1",
    "ProxyProtocolV2",
    "invalid_pp_dest_address",
    "invalid_pp_source_address",
    "unknown_pp_dest_address",
    "unknown_pp_source_address",
]

log = getSocketLogger(__name__)

#: The source address :meth:`ProxyProtocolV1.parse_pp_line` returns for an
#: ``UNKNOWN`` line (the edge is then given the socket's peer address).
unknown_pp_source_address: tuple[None, None] = (None, None)

#: The destination address returned for an ``UNKNOWN`` line.
unknown_pp_dest_address: tuple[None, None] = (None, None)

#: Kept for python-slimta scripts that import it; an invalid header closes
#: the connection here, so no edge is ever given this address.
invalid_pp_source_address: tuple[None, None] = (None, None)

#: Kept for python-slimta scripts that import it (see above).
invalid_pp_dest_address: tuple[None, None] = (None, None)

if TYPE_CHECKING:
    # For the type checker the mixins are edges, so ``super().handle`` is
    # known; at run time they are plain classes put in front of the edge's
    # class by ``mixin``.
    _MixinBase = EdgeServer
else:
    _MixinBase = object

#: The longest version 1 header, CRLF included (specification, section 2.1).
V1_MAX_LENGTH = 107

_V1_PREFIX = b"PROXY "
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_LINE = re.compile(rb"PROXY (TCP4|TCP6) ([0-9A-Fa-f:.]+) ([0-9A-Fa-f:.]+) ([0-9]{1,5}) ([0-9]{1,5})\r\n")
_V1_UNKNOWN = re.compile(rb"PROXY UNKNOWN(?: [^\r\n]*)?\r\n")

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_UNSPEC, _V2_INET, _V2_INET6, _V2_UNIX = 0x0, 0x1, 0x2, 0x3
_V2_STREAM = 0x1
# Address block sizes by family: two addresses and (for IP) two ports.
_V2_ADDRESS_LENGTHS = {_V2_INET: 12, _V2_INET6: 36, _V2_UNIX: 216}


class ProxyProtocolError(SlimtaError):
    """Base class of the PROXY protocol errors.

    .. versionadded:: 0.1.0
    """


class InvalidProxyHeader(ProxyProtocolError, ValueError):
    """The PROXY header was missing, malformed, too long, cut short or too slow.

    .. versionadded:: 0.1.0
    """


class LocalConnection(ProxyProtocolError):
    """A version 2 ``LOCAL`` header: the proxy's own connection (a health check)."""


def _recv_exact(sock: Any, size: int, expect: bytes = b"") -> bytes:
    """Receive exactly ``size`` octets; fail as soon as they stop matching ``expect``.

    ``expect`` is a prefix the octets must start with (the version 2
    signature), checked after every chunk so that a client that is not a
    proxy is turned away at its first wrong octet.
    """
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise InvalidProxyHeader("connection closed during the PROXY header")
        data += chunk
        if expect and not expect.startswith(data[: len(expect)]):
            raise InvalidProxyHeader("invalid PROXY protocol signature")
    return data


def _check_v1_prefix(data: bytes) -> None:
    if not data[: len(_V1_PREFIX)] == _V1_PREFIX[: len(data)]:
        raise InvalidProxyHeader("invalid PROXY protocol v1 signature")


def _read_v1_line(sock: Any, initial: bytes) -> bytes:
    """Receive a version 1 line up to and including its CRLF, never past it."""
    line = initial
    _check_v1_prefix(line)
    while not line.endswith(b"\r\n"):
        room = V1_MAX_LENGTH - len(line)
        if room <= 0:
            raise InvalidProxyHeader(f"PROXY protocol v1 header longer than {V1_MAX_LENGTH} octets")
        # Peek, so that what follows the CRLF stays queued for the edge.
        # MSG_PEEK returns at once while anything is queued, so whatever has
        # no CRLF in it is then received (consumed) before peeking again.
        peeked = sock.recv(room, _socket.MSG_PEEK)
        if not peeked:
            raise InvalidProxyHeader("connection closed during the PROXY header")
        start = max(len(line) - 1, 0)
        end = (line + peeked).find(b"\r\n", start)
        take = len(peeked) if end < 0 else end + 2 - len(line)
        line += _recv_exact(sock, take)
        _check_v1_prefix(line)
        if b"\r\n" not in line and b"\n" in line:
            raise InvalidProxyHeader("bare LF in the PROXY protocol v1 header")
    return line


def _v1_address(family: bytes, host: bytes, port: bytes, which: str) -> tuple[str, int]:
    try:
        ip = ipaddress.ip_address(host.decode("ascii"))
    except ValueError:
        raise InvalidProxyHeader(f"invalid PROXY protocol {which} address") from None
    if ip.version != (4 if family == b"TCP4" else 6):
        raise InvalidProxyHeader(f"PROXY protocol {which} address is not {family.decode()}")
    number = int(port)
    if number > 65535 or (len(port) > 1 and port.startswith(b"0")):
        raise InvalidProxyHeader(f"invalid PROXY protocol {which} port")
    return str(ip), number


def _v2_addresses(family: int, block: bytes) -> tuple[Any, Any]:
    """Decode the address block of a version 2 PROXY header (TLVs ignored)."""
    if family == _V2_INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        return (_socket.inet_ntop(_socket.AF_INET, src), sport), (
            _socket.inet_ntop(_socket.AF_INET, dst),
            dport,
        )
    if family == _V2_INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        return (_socket.inet_ntop(_socket.AF_INET6, src), sport), (
            _socket.inet_ntop(_socket.AF_INET6, dst),
            dport,
        )
    # AF_UNIX: two NUL-padded 108-octet paths, given as getpeername would.
    src, dst = struct.unpack_from("!108s108s", block)
    return os.fsdecode(src.split(b"\0", 1)[0]), os.fsdecode(dst.split(b"\0", 1)[0])


class _ProxyProtocolBase(_MixinBase):
    """What the three mixins share: settings, ``mixin`` and the ``handle`` wrapper."""

    #: Seconds allowed for the whole header to arrive; ``None``: no limit.
    #:
    #: .. versionadded:: 0.1.0
    proxyproto_timeout: float | None = 10.0

    #: The most octets accepted after the 16 fixed ones of a version 2
    #: header (addresses and TLVs); a longer header closes the connection
    #: before its body is read.
    #:
    #: .. versionadded:: 0.1.0
    proxyproto_max_v2_length: int = 4096

    @classmethod
    def mixin(cls, edge: EdgeServer, *, timeout: float | None = 10.0, max_v2_length: int = 4096) -> None:
        """Make ``edge`` read a PROXY header at the start of every connection.

        The edge's class is replaced by a new subclass with this mixin in
        front of it, so only this edge object is affected.

        Args:
            edge: The edge, not yet serving connections.
            timeout: Seconds allowed for the whole header
                (:attr:`proxyproto_timeout` of this edge); ``None``: no limit.

                .. versionadded:: 0.1.0
            max_v2_length: :attr:`proxyproto_max_v2_length` of this edge.

                .. versionadded:: 0.1.0

        Raises:
            ValueError: ``edge`` is not an :class:`~slimta.edge.EdgeServer`,
                or already reads PROXY headers.
        """
        candidate: object = edge  # checked at run time: scripts are not type-checked
        if not isinstance(candidate, EdgeServer) or isinstance(candidate, _ProxyProtocolBase):
            raise ValueError(edge)
        old_class = type(edge)
        edge.__class__ = type(cls.__name__ + old_class.__name__, (cls, old_class), {})
        edge.proxyproto_timeout = timeout  # type: ignore[attr-defined]
        edge.proxyproto_max_v2_length = max_v2_length  # type: ignore[attr-defined]

    def _read_source(self, sock: Any) -> Any:
        """Read the header and return its source address (``None``: use the peer's)."""
        raise NotImplementedError

    def handle(self, socket: Any, address: Any) -> None:
        """Read the PROXY header, then serve the connection with the client's address.

        A missing, invalid or slow header is logged and the connection is
        closed (this returns without calling the edge).
        """
        expired = InvalidProxyHeader(f"no complete PROXY header within {self.proxyproto_timeout} seconds")
        try:
            with gevent.Timeout(self.proxyproto_timeout, expired):
                src_addr = self._read_source(socket)
        except LocalConnection:
            log.proxyproto_local(socket)
            src_addr = None
        except ProxyProtocolError as exc:
            log.proxyproto_invalid(socket, exc)
            return
        except OSError as exc:
            log.error(socket, exc, address)
            return
        if src_addr is None:
            src_addr = address
        else:
            log.proxyproto_success(socket, src_addr)
        super().handle(socket, src_addr)


class ProxyProtocolV1(_ProxyProtocolBase):
    """Expect a version 1 (text) PROXY header on every connection.

    Mix into an edge with :meth:`mixin`, or put it first in the bases of an
    edge subclass (``class MyEdge(ProxyProtocolV1, SmtpEdge)``).  The edge's
    ``handle`` is then given ``(ip, port)`` of the client named by the
    header.
    """

    @classmethod
    def parse_pp_line(cls, line: bytes) -> tuple[Any, Any]:
        """Parse one version 1 header line.

        Args:
            line: The whole line, from ``PROXY`` to CRLF.

        Returns:
            ``(source, destination)``, each ``(ip, port)``; for ``UNKNOWN``
            both are :data:`unknown_pp_source_address`.

        Raises:
            InvalidProxyHeader: The line is not a valid header.
        """
        if _V1_UNKNOWN.fullmatch(line):
            return unknown_pp_source_address, unknown_pp_dest_address
        match = _V1_LINE.fullmatch(line)
        if match is None:
            raise InvalidProxyHeader("invalid PROXY protocol v1 header")
        family, src, dst, sport, dport = match.groups()
        return _v1_address(family, src, sport, "source"), _v1_address(family, dst, dport, "destination")

    @classmethod
    def process_pp_v1(cls, sock: Any, initial: bytes) -> tuple[Any, Any]:
        """Receive and parse a version 1 header.

        Args:
            sock: The connection.
            initial: Octets of the header already received from ``sock``.

        Returns:
            See :meth:`parse_pp_line`.

        Raises:
            InvalidProxyHeader: See :meth:`parse_pp_line`; also for a line
                over 107 octets or a connection closed before the CRLF.
        """
        line = _read_v1_line(sock, initial)
        log.recv(sock, line)
        return cls.parse_pp_line(line)

    def _read_source(self, sock: Any) -> Any:
        src_addr, _ = self.process_pp_v1(sock, b"")
        return None if src_addr == unknown_pp_source_address else src_addr


class ProxyProtocolV2(_ProxyProtocolBase):
    """Expect a version 2 (binary) PROXY header on every connection.

    Used like :class:`ProxyProtocolV1`.  TCP over IPv4 or IPv6 gives the
    edge ``(ip, port)``; a UNIX socket source gives its path (a ``str``,
    as :meth:`socket.socket.getpeername` would).  TLVs are skipped.
    """

    @classmethod
    def process_pp_v2(cls, sock: Any, initial: bytes, max_length: int | None = None) -> tuple[Any, Any]:
        """Receive and parse a version 2 header.

        Args:
            sock: The connection.
            initial: Octets of the header already received from ``sock``.
            max_length: The longest variable part accepted; defaults to
                :attr:`proxyproto_max_v2_length`.

                .. versionadded:: 0.1.0

        Returns:
            ``(source, destination)``; both :data:`unknown_pp_source_address`
            for an unspecified address family.

        Raises:
            LocalConnection: The header has the ``LOCAL`` command (its
                body has been consumed).
            InvalidProxyHeader: Bad signature, version, command, family or
                protocol, a variable part too short for its addresses or
                longer than allowed, or a connection closed early.
        """
        limit = cls.proxyproto_max_v2_length if max_length is None else max_length
        if not _V2_SIGNATURE.startswith(initial[:12]):
            raise InvalidProxyHeader("invalid PROXY protocol signature")
        fixed = initial + _recv_exact(sock, 16 - len(initial), _V2_SIGNATURE[len(initial) :])
        version_command, family_protocol, length = struct.unpack("!BBH", fixed[12:16])
        if version_command >> 4 != 2:
            raise InvalidProxyHeader("unsupported PROXY protocol version")
        command, family, protocol = version_command & 0xF, family_protocol >> 4, family_protocol & 0xF
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise InvalidProxyHeader("invalid PROXY protocol v2 command")
        if length > limit:
            raise InvalidProxyHeader(f"PROXY protocol v2 header longer than {16 + limit} octets")
        body = _recv_exact(sock, length)
        log.recv(sock, fixed + body)
        if command == _V2_LOCAL:
            raise LocalConnection
        if family == _V2_UNSPEC:
            return unknown_pp_source_address, unknown_pp_dest_address
        if family not in _V2_ADDRESS_LENGTHS or protocol != _V2_STREAM:
            raise InvalidProxyHeader("unsupported PROXY protocol v2 address family or protocol")
        if length < _V2_ADDRESS_LENGTHS[family]:
            raise InvalidProxyHeader("PROXY protocol v2 address block too short")
        return _v2_addresses(family, body)

    def _read_source(self, sock: Any) -> Any:
        src_addr, _ = self.process_pp_v2(sock, b"", self.proxyproto_max_v2_length)
        return None if src_addr == unknown_pp_source_address else src_addr


class ProxyProtocol(_ProxyProtocolBase):
    """Accept either version of the PROXY header, told apart by its first octet.

    Used like :class:`ProxyProtocolV1`.
    """

    def _read_source(self, sock: Any) -> Any:
        first = sock.recv(1, _socket.MSG_PEEK)
        if not first:
            raise InvalidProxyHeader("connection closed before the PROXY header")
        if first == _V1_PREFIX[:1]:
            src_addr, _ = ProxyProtocolV1.process_pp_v1(sock, b"")
        elif first == _V2_SIGNATURE[:1]:
            src_addr, _ = ProxyProtocolV2.process_pp_v2(sock, b"", self.proxyproto_max_v2_length)
        else:
            raise InvalidProxyHeader("invalid PROXY protocol signature")
        return None if src_addr == unknown_pp_source_address else src_addr
