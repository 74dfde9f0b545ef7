"""Socket I/O for SMTP sessions, on gevent.

This is the only module of :mod:`slimta.smtp` that touches sockets.  It reads
in large blocks (the protocol core finds line ends with ``bytes.find``), writes
each group of replies with one ``sendall``, and turns the many ways a socket
can fail (``ECONNRESET``, ``EPIPE``, TLS errors, EOF) into
:class:`~slimta.smtp.ConnectionLost`.

TLS stays cooperative whatever context the user passes.  A plain stdlib
:class:`ssl.SSLContext` wraps sockets into stdlib ``SSLSocket`` objects whose
handshake blocks the whole process; gevent's own context class does not.  We
therefore always build a :class:`gevent.ssl.SSLSocket` around the user's
context object, which works for both, with or without monkey-patching.
"""

from __future__ import annotations

import errno
import ssl
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import gevent.ssl

from slimta.logging import getSocketLogger
from slimta.smtp import ConnectionLost

if TYPE_CHECKING:
    from collections.abc import Iterator

    import gevent.socket

__all__ = ["IO", "RECV_SIZE"]

#: Bytes asked for in one ``recv``; big enough for a pipelined group or a
#: large slice of message data in one system call.
RECV_SIZE = 65536

_LOST_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN, errno.EBADF})

log = getSocketLogger(__name__)


@contextmanager
def _map_socket_errors() -> Iterator[None]:
    """Translate transport failures into ConnectionLost at the I/O boundary."""
    try:
        yield
    except ssl.SSLError as exc:
        raise ConnectionLost(f"TLS error: {exc}") from exc
    except OSError as exc:
        if exc.errno in _LOST_ERRNOS or exc.errno is None:
            raise ConnectionLost(f"Connection lost: {exc}") from exc
        raise


class IO:
    """Buffered reads and writes on one connected socket.

    Args:
        socket: a connected gevent socket.
        address: the peer's address, for logs and replies.
    """

    def __init__(self, socket: gevent.socket.socket, address: Any = None) -> None:
        self.socket: Any = socket
        self.address = address
        self.encrypted = False

    def recv(self) -> bytes:
        """Read what is available (up to :data:`RECV_SIZE`); ``b""`` at EOF."""
        with _map_socket_errors():
            data: bytes = self.socket.recv(RECV_SIZE)
        log.recv(self.socket, data)
        return data

    def send(self, data: bytes) -> None:
        """Write all of ``data`` (one system call for small groups)."""
        if not data:
            return
        log.send(self.socket, data)
        with _map_socket_errors():
            self.socket.sendall(data)

    def _wrap(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None) -> Any:
        # gevent's SSLSocket accepts any SSLContext (stdlib or gevent's) and
        # performs the handshake cooperatively.
        return gevent.ssl.SSLSocket(
            sock=self.socket,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            _context=context,
        )

    def encrypt_socket_server(self, context: ssl.SSLContext) -> bool:
        """Run the server side of a TLS handshake; returns whether it succeeded.

        On failure the socket is unusable and the caller should close it.
        """
        return self._handshake(context, server_side=True, server_hostname=None)

    def encrypt_socket_client(self, context: ssl.SSLContext, server_hostname: str | None = None) -> bool:
        """Run the client side of a TLS handshake; returns whether it succeeded."""
        return self._handshake(context, server_side=False, server_hostname=server_hostname)

    def _handshake(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None) -> bool:
        try:
            sslsock = self._wrap(context, server_side=server_side, server_hostname=server_hostname)
            sslsock.do_handshake()
        except (OSError, ValueError) as exc:
            log.error(self.socket, exc, self.address)
            return False
        self.socket = sslsock
        self.encrypted = True
        log.encrypt(sslsock, context)
        return True

    def auth_exchange(self, active: bool) -> None:
        """Mark the start or end of a SASL exchange, so logs redact secrets."""
        if active:
            log.auth_begin(self.socket)
        else:
            log.auth_end(self.socket)

    def close(self) -> None:
        """Close the connection, ignoring errors from an already-broken socket."""
        with suppress(OSError):  # close() on an already-broken socket
            self.socket.close()
        log.close(self.socket)
