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
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import gevent.ssl
from gevent import Timeout

from slimta.logging import getSocketLogger
from slimta.smtp import ConnectionLost

if TYPE_CHECKING:
    import gevent.socket

__all__ = ["IO", "RECV_SIZE"]

#: Bytes asked for in one ``recv``; big enough for a pipelined group or a
#: large slice of message data in one system call.
RECV_SIZE = 65536

_LOST_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN, errno.EBADF})

log = getSocketLogger(__name__)


def _lost(exc: OSError) -> Exception:
    """Translate a transport failure into ConnectionLost at the I/O boundary."""
    if isinstance(exc, ssl.SSLError):
        return ConnectionLost(f"TLS error: {exc}")
    if exc.errno in _LOST_ERRNOS or exc.errno is None:
        return ConnectionLost(f"Connection lost: {exc}")
    return exc


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
        #: Seconds a write may wait for a peer that does not read (None: no
        #: bound).  Replies are small and nearly always leave in one
        #: non-blocking ``send``; only a full TCP window waits.
        self.send_timeout: float | None = None

    def recv(self) -> bytes:
        """Read what is available (up to :data:`RECV_SIZE`); ``b""`` at EOF.

        Raises:
            TimeoutError: the socket's own timeout expired.
            ConnectionLost: the connection broke.
        """
        try:
            data: bytes = self.socket.recv(RECV_SIZE)
        except TimeoutError:
            raise
        except OSError as exc:
            raise _lost(exc) from exc
        log.recv(self.socket, data)
        return data

    def send(self, data: bytes) -> None:
        """Write all of ``data``.

        One ``send`` call nearly always takes a group of replies whole; gevent's
        ``sendall`` is used only for what is left (it costs an extra system
        call to size its chunks, on every call).

        Raises:
            ConnectionLost: the connection broke, or the peer stopped reading
                for longer than :attr:`send_timeout`.
        """
        if not data:
            return
        log.send(self.socket, data)
        sock = self.socket
        try:
            sent = sock.send(data)
            if sent < len(data):
                with Timeout(self.send_timeout):
                    sock.sendall(memoryview(data)[sent:])
        except Timeout as exc:
            raise ConnectionLost("Timed out: the peer is not reading") from exc
        except OSError as exc:
            raise _lost(exc) from exc

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
