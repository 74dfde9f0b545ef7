"""Socket helpers shared by edges, relays and the ``slimta`` command.

Two jobs live here:

* **Outbound connections limited to IPv4.**  Many receiving mail servers
  publish AAAA records but reject or greylist mail arriving over IPv6 (no
  reverse DNS, no SPF for the v6 range).  :func:`create_connection_ipv4` and
  :func:`build_ipv4_socket_creator` are drop-in replacements for
  :func:`gevent.socket.create_connection` that never pick an IPv6 address, so
  they can be handed to a relay as its ``socket_creator``.
* **Listening sockets.**  :func:`create_listeners` binds every address a host
  name resolves to (or an ``AF_UNIX`` path) and starts listening with a
  backlog of :data:`LISTEN_BACKLOG`.

Everything goes through :mod:`gevent.socket`, so name resolution and connects
yield to other greenlets instead of blocking the hub, whether or not the
program called :func:`gevent.monkey.patch_all`.
"""

from __future__ import annotations

import os
import socket as _stdlib_socket
from collections.abc import Callable, Collection
from typing import Any

from gevent import socket

from slimta.core import SlimtaError

__all__ = [
    "LISTEN_BACKLOG",
    "InvalidAddressError",
    "ListenerError",
    "NoIPv4AddressError",
    "build_ipv4_socket_creator",
    "create_connection_ipv4",
    "create_listeners",
]

#: Listen backlog given to every socket made by :func:`create_listeners`.
#:
#: gevent's servers default to 128 pending connections, which drops part of a
#: burst of a thousand simultaneous connects (a busy relay reconnecting after
#: an outage, say).  1024 absorbs such a burst; where the system allows more
#: (``socket.SOMAXCONN``) we ask for that.  The kernel still silently caps the
#: value at ``net.core.somaxconn`` on Linux.
LISTEN_BACKLOG: int = max(1024, _stdlib_socket.SOMAXCONN)

#: The call signature of :func:`gevent.socket.create_connection`, as used by
#: relays for their ``socket_creator`` argument.
SocketCreator = Callable[..., socket.socket]


class InvalidAddressError(SlimtaError, ValueError):
    """An address argument does not have the expected shape.

    For TCP that is a ``(host, port)`` tuple, for ``AF_UNIX`` a path.  The
    message names the offending value.  It is also a :class:`ValueError`,
    which is what python-slimta raised here.
    """


class NoIPv4AddressError(SlimtaError, OSError):
    """A host that must be reached over IPv4 has no IPv4 address.

    Raised by :func:`create_connection_ipv4` for an IPv6 literal such as
    ``'::1'`` or a name with only AAAA records.  It is an :class:`OSError`
    so that code written for ``socket.error`` keeps catching it.
    """


class ListenerError(SlimtaError, OSError):
    """A listening socket could not be created or bound.

    Keeps the ``errno`` of the underlying failure (``EADDRINUSE``,
    ``EACCES``, ...) and names the address in its message.
    """


def build_ipv4_socket_creator(
    only_ports: Collection[int] | None = None,
) -> SocketCreator:
    """Return a ``socket_creator`` that connects over IPv4 only.

    The result takes the same arguments as
    :func:`gevent.socket.create_connection` and can be given to relays such as
    :class:`~slimta.relay.smtp.mx.MxSmtpRelay` as their ``socket_creator``.

    Args:
        only_ports: If given, only connections to these ports are limited to
            IPv4; connections to any other port may use IPv6.

    Returns:
        A callable ``(address, timeout=None, source_address=None)`` that
        returns a connected gevent socket.
    """
    # Freeze the ports now: a list the caller mutates later must not change
    # the behaviour of a relay that already holds this creator.
    ports = None if only_ports is None else frozenset(only_ports)

    def socket_creator(
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        return create_connection_ipv4(address, timeout, source_address, ports)

    return socket_creator


def create_connection_ipv4(
    address: tuple[str, int],
    timeout: float | None = None,
    source_address: tuple[str, int] | None = None,
    only_ports: Collection[int] | None = None,
) -> socket.socket:
    """Connect like :func:`gevent.socket.create_connection`, over IPv4 only.

    Each IPv4 address of the host is tried in the resolver's order until one
    accepts the connection.

    Args:
        address: The ``(host, port)`` to connect to.
        timeout: Seconds to wait for the connection; ``None`` waits as long as
            the operating system does.  The socket keeps this timeout.
        source_address: Optional ``(host, port)`` to bind before connecting.
        only_ports: If given, only connections to these ports are limited to
            IPv4; others are made with gevent's ordinary
            ``create_connection``, which may use IPv6.

    Returns:
        A connected gevent socket of family ``AF_INET`` (unless the port was
        exempted by *only_ports*).

    Raises:
        InvalidAddressError: *address* is not a ``(host, port)`` pair.
        NoIPv4AddressError: The host has no IPv4 address.
        OSError: Every IPv4 address refused or timed out; the error of the
            last attempt is raised, as ``create_connection`` does.
    """
    host, port = _split_tcp_address(address)
    if only_ports is not None and port not in only_ports:
        return socket.create_connection((host, port), timeout, source_address)
    try:
        candidates = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NoIPv4AddressError(exc.errno, f"no IPv4 address for {host!r}: {exc.strerror}") from exc
    if not candidates:
        raise NoIPv4AddressError(f"no IPv4 address for {host!r}")
    last_exc: OSError | None = None
    for *_, sockaddr in candidates:
        try:
            # sockaddr is numeric, so create_connection does no second lookup
            # and cannot wander off to an IPv6 address.
            return socket.create_connection((str(sockaddr[0]), port), timeout, source_address)
        except OSError as exc:
            last_exc = exc
    assert last_exc is not None  # candidates was not empty
    raise last_exc


def create_listeners(
    address: Any,
    family: int = socket.AF_UNSPEC,
    socktype: int = socket.SOCK_STREAM,
    proto: int = socket.IPPROTO_IP,
) -> list[socket.socket]:
    """Create bound, listening sockets for an address.

    For TCP the host is resolved (``AI_PASSIVE``) and one socket is bound per
    result, so ``('localhost', 25)`` on a dual-stack host gives a socket on
    ``127.0.0.1`` and one on ``::1``, and a host of ``None`` or ``''`` gives
    the wildcard addresses.  IPv6 sockets are ``IPV6_V6ONLY`` so they never
    collide with their IPv4 twins.  With ``family=socket.AF_UNIX``, *address*
    is a filesystem path and one socket is returned.

    Every socket has ``SO_REUSEADDR`` set, is non-blocking, and (for stream
    sockets) listens with a backlog of :data:`LISTEN_BACKLOG`.

    Args:
        address: A ``(host, port)`` tuple, or a path for ``AF_UNIX``.
        family: The address family; ``AF_UNSPEC`` means every family the
            host resolves to.
        socktype: The socket type, ``SOCK_STREAM`` by default.
        proto: The socket protocol.

    Returns:
        The listening gevent sockets, at least one.

    Raises:
        InvalidAddressError: *address* has the wrong shape for *family*.
        ListenerError: No socket could be bound (the error names the address
            of the last failure), or the host name did not resolve.
    """
    if family == socket.AF_UNIX:
        if not isinstance(address, str | bytes | os.PathLike):
            raise InvalidAddressError(f"AF_UNIX listener needs a path, not {address!r}")
        path = os.fspath(address)
        return [_bound_socket(socket.AF_UNIX, socktype, proto, path)]
    host, port = _split_tcp_address(address)
    try:
        results = socket.getaddrinfo(host, port, family, socktype, proto, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenerError(exc.errno, f"cannot resolve listener address {host!r}: {exc.strerror}") from exc
    listeners: list[socket.socket] = []
    last_exc: ListenerError | None = None
    for fam, typ, prt, _, sockaddr in results:
        try:
            listeners.append(_bound_socket(fam, typ, prt, sockaddr))
        except ListenerError as exc:
            # One family failing (no IPv6 on this host, say) is not fatal as
            # long as another address could be bound.
            last_exc = exc
    if not listeners:
        if last_exc is not None:
            raise last_exc
        raise ListenerError(f"{address!r} resolved to no usable address")
    return listeners


def _split_tcp_address(address: Any) -> tuple[str | None, int]:
    """Check that *address* is a ``(host, port)`` pair and return it."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise InvalidAddressError(f"expected a (host, port) tuple, got {address!r}")
    host, port = address
    if host is not None and not isinstance(host, str):
        raise InvalidAddressError(f"host must be a string, got {host!r}")
    # bool is an int subclass, but True as a port is certainly a mistake.
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidAddressError(f"port must be an integer from 0 to 65535, got {port!r}")
    return host, port


def _bound_socket(family: int, socktype: int, proto: int, sockaddr: Any) -> socket.socket:
    """Create one socket, bind it to *sockaddr* and start listening."""
    try:
        sock = socket.socket(family, socktype, proto)
    except OSError as exc:
        raise ListenerError(exc.errno, f"cannot create socket for {sockaddr!r}: {exc.strerror}") from exc
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind(sockaddr)
        # Datagram sockets are bound but have nothing to listen for.
        if socktype in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenerError(exc.errno, f"cannot listen on {sockaddr!r}: {exc.strerror}") from exc
    return sock
