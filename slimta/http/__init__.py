"""HTTP client connections on gevent sockets, plain or over TLS.

:class:`HTTPConnection` and :class:`HTTPSConnection` are the standard
library's :mod:`http.client` classes with one change: the socket is a
gevent socket, so connecting, sending and reading the response yield to
other greenlets instead of blocking the process, whether or not the
program called :func:`gevent.monkey.patch_all`.

TLS stays cooperative whatever :class:`ssl.SSLContext` is passed.  The
standard library's ``context.wrap_socket()`` would return a stdlib
``SSLSocket`` whose handshake blocks the gevent hub; we always build a
:class:`gevent.ssl.SSLSocket` around the caller's context instead.  Without
a context, :class:`HTTPSConnection` verifies the server's certificate and
host name against the system's trust store, as the standard library does.

:func:`get_connection` picks the class from a URL, as the HTTP relay does.
"""

from __future__ import annotations

import http.client
import socket as _stdlib_socket
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

import gevent.socket
import gevent.ssl

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["HTTPConnection", "HTTPSConnection", "get_connection"]

# The sentinel http.client uses for "no timeout given": the socket module's
# global default applies.
_DEFAULT_TIMEOUT: Any = _stdlib_socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]

_create_connection: Callable[..., Any] = gevent.socket.create_connection


class HTTPConnection(http.client.HTTPConnection):
    """An :class:`http.client.HTTPConnection` that connects with gevent.

    Takes the same arguments as the standard library class (``host``,
    ``port``, ``timeout``, ``source_address``, ``blocksize``).
    """

    def __init__(self, host: str, port: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(host, port, *args, **kwargs)
        # http.client.HTTPConnection.connect() calls this attribute; pointing
        # it at gevent's create_connection is all it takes to make connect(),
        # and therefore every later read and write, cooperative.
        self._create_connection = _create_connection


class HTTPSConnection(http.client.HTTPSConnection):
    """An :class:`http.client.HTTPSConnection` that connects with gevent.

    Args:
        host: The server's host name, optionally with ``:port``.  It is also
            the name the server's certificate must match (and is sent with
            SNI).
        port: The TCP port; defaults to 443.
        timeout: Seconds allowed for each blocking socket operation.
        source_address: An optional ``(host, port)`` to connect from.
        context: The :class:`ssl.SSLContext` to encrypt with; either a
            standard library or a gevent context works.  ``None`` creates one
            with :func:`ssl.create_default_context`, which verifies the
            certificate and the host name.
        blocksize: Bytes read at a time from a file-like request body.
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        timeout: float | None = _DEFAULT_TIMEOUT,
        source_address: tuple[str, int] | None = None,
        *,
        context: ssl.SSLContext | None = None,
        blocksize: int = 8192,
    ) -> None:
        if context is None:
            context = ssl.create_default_context()
        super().__init__(
            host,
            port,
            timeout=timeout,
            source_address=source_address,
            context=context,
            blocksize=blocksize,
        )
        self._create_connection = _create_connection

    def connect(self) -> None:
        """Connect to the server and run the TLS handshake, cooperatively."""
        # Skip http.client.HTTPSConnection.connect(), which would wrap the
        # socket with the context's own (possibly blocking) SSLSocket class.
        http.client.HTTPConnection.connect(self)
        server_hostname = self._tunnel_host or self.host  # type: ignore[attr-defined]
        sock = self.sock
        try:
            self.sock = gevent.ssl.SSLSocket(
                sock=sock,
                server_hostname=server_hostname,
                do_handshake_on_connect=True,
                _context=self._context,  # type: ignore[attr-defined]
            )
        except BaseException:
            sock.close()
            self.sock = None
            raise


def get_connection(
    url: str | bytes | SplitResult, context: ssl.SSLContext | None = None
) -> http.client.HTTPConnection:
    """Return an unconnected connection to the server named by a URL.

    Args:
        url: An ``http://`` or ``https://`` URL (a URL without a scheme is
            taken as ``http``), or the result of
            :func:`urllib.parse.urlsplit`.  Only the scheme, host and port
            matter; user information in the URL is ignored.
        context: The :class:`ssl.SSLContext` for ``https`` URLs; ``None``
            verifies the server against the system's trust store.

    Returns:
        An :class:`HTTPSConnection` for ``https`` URLs, otherwise an
        :class:`HTTPConnection`.
    """
    if isinstance(url, bytes):
        url = url.decode("ascii")
    parsed = urlsplit(url, scheme="http") if isinstance(url, str) else url
    # Drop any "user:password@" part: http.client would take it as the host.
    host = parsed.netloc.rpartition("@")[2] or "localhost"
    if parsed.scheme.lower() == "https":
        return HTTPSConnection(host, context=context)
    return HTTPConnection(host)
