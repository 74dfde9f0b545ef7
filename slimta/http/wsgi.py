"""A base class for WSGI applications that log every request and response.

A :class:`WsgiServer` subclass implements :meth:`WsgiServer.handle` as if it
were a WSGI application.  The instance itself is the application to give to
any WSGI server; calling it logs the request and the response through
:func:`slimta.logging.getHttpLogger`.  :meth:`WsgiServer.build_server` serves
it with :class:`gevent.pywsgi.WSGIServer`, hardened as follows:

* TLS is cooperative whatever :class:`ssl.SSLContext` is given as
  ``ssl_args={'ssl_context': ...}``: gevent's server would call the
  context's own ``wrap_socket()``, whose handshake blocks the hub for a
  stdlib context, so we build a :class:`gevent.ssl.SSLSocket` instead.  A
  failed handshake is logged at ``DEBUG`` and the connection closed.
* Every connection has a socket timeout (:attr:`WsgiServer.socket_timeout`)
  covering the TLS handshake, each wait for a request and each read of a
  request body, so idle or stalled clients do not hold greenlets for ever.
* Listening on an ``(ip, port)`` tuple uses a backlog of
  :data:`slimta.util.LISTEN_BACKLOG`.
* gevent's access log is off (requests are already logged, as key=value
  lines, at ``DEBUG``); its error log goes to :mod:`logging`.
* Request headers are parsed by a small reader of our own instead of the
  :mod:`email` package (most of gevent's time per request), limited to
  :data:`MAX_HEADER_FIELDS` fields of :data:`MAX_HEADER_LINE` octets;
  obsolete line folding is refused with ``400``.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import TYPE_CHECKING, Any, ClassVar

import gevent.ssl
from gevent.pywsgi import WSGIHandler as _GeventWSGIHandler
from gevent.pywsgi import WSGIServer as _GeventWSGIServer

from slimta.logging import getHttpLogger
from slimta.util import LISTEN_BACKLOG

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from gevent.pool import Pool

__all__ = ["WsgiServer"]

log = getHttpLogger(__name__)
_errors = logging.getLogger(__name__)


#: Limits on a request's header section (http.client allows 100 fields).
MAX_HEADER_FIELDS = 100
MAX_HEADER_LINE = 8192

# RFC 9110 field-name: a token.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


class _Headers:
    """A request's header section, read with ``readline`` and a few checks.

    gevent.pywsgi parses headers with :func:`http.client.parse_headers`,
    which runs the :mod:`email` package's feed parser: most of the server's
    time per request.  This reads the same fields with plain string
    operations and offers the part of that interface pywsgi uses.  A field
    line without a colon or with a bad name, an obsolete folded line (RFC
    9112 5.2 lets a server reject it), more than :data:`MAX_HEADER_FIELDS`
    fields or a line longer than :data:`MAX_HEADER_LINE` set :attr:`status`,
    and pywsgi answers ``400``.
    """

    __slots__ = ("fields", "status")

    def __init__(self, rfile: Any) -> None:
        self.fields: list[tuple[str, str]] = []
        self.status = ""
        fields = self.fields
        while True:
            raw: bytes = rfile.readline(MAX_HEADER_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            if len(raw) > MAX_HEADER_LINE:
                self.status = "Header line too long"
                return
            line = raw.decode("latin-1")
            name, colon, value = line.partition(":")
            if not colon or not _FIELD_NAME.match(name):
                self.status = "Invalid header line"
                return
            if len(fields) == MAX_HEADER_FIELDS:
                self.status = "Too many headers"
                return
            fields.append((name, value.strip(" \t\r\n")))
        self._check_framing()

    def _check_framing(self) -> None:
        # Request smuggling defences (RFC 9112 6.1, 6.3): the body's length
        # must be unambiguous, and chunked is the only coding we decode.
        lengths = {value for key, value in self.fields if key.lower() == "content-length"}
        codings = [value for key, value in self.fields if key.lower() == "transfer-encoding"]
        if len(lengths) > 1:
            self.status = "Conflicting Content-Length"
        elif lengths and codings:
            self.status = "Both Content-Length and Transfer-Encoding"
        elif codings and (len(codings) > 1 or codings[0].lower() != "chunked"):
            self.status = "Unsupported Transfer-Encoding"

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.fields:
            if key.lower() == name:
                return value
        return default

    getheader = get

    def __delitem__(self, name: str) -> None:
        name = name.lower()
        self.fields = [(key, value) for key, value in self.fields if key.lower() != name]

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")

    @property
    def headers(self) -> list[str]:
        # The form pywsgi turns into HTTP_* environ keys.
        return [f"{key}: {value}\r\n" for key, value in self.fields]


class _Handler(_GeventWSGIHandler):
    """gevent's request handler with the faster header parser."""

    def MessageClass(self, rfile: Any, *args: Any) -> _Headers:  # type: ignore[override]  # noqa: N802 - gevent hook
        return _Headers(rfile)


class _HardenedWSGIServer(_GeventWSGIServer):
    """gevent's WSGI server with a socket timeout and cooperative TLS."""

    handler_class = _Handler

    def __init__(self, *args: Any, socket_timeout: float | None = None, **kwargs: Any) -> None:
        self._ssl_context: ssl.SSLContext | None = kwargs.get("ssl_context")
        self._socket_timeout = socket_timeout
        super().__init__(*args, **kwargs)

    def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> Any:
        client_socket.settimeout(self._socket_timeout)
        try:
            if self._ssl_context is not None:
                ssl_socket = gevent.ssl.SSLSocket(
                    sock=client_socket,
                    server_side=True,
                    do_handshake_on_connect=True,
                    _context=self._ssl_context,
                )
            else:
                # Legacy keyfile/certfile arguments: gevent's own wrapper.
                wrap: Any = getattr(self, "wrap_socket")  # noqa: B009 - typed as unbound in the stubs
                ssl_socket = wrap(client_socket, **(self.ssl_args or {}))
        except OSError as exc:  # ssl.SSLError and socket timeouts are OSErrors
            _errors.debug("TLS handshake with %s failed: %s", address, exc)
            client_socket.close()
            return None
        try:
            return self.handle(ssl_socket, address)
        finally:
            ssl_socket.close()

    def handle(self, sock: Any, address: Any) -> Any:
        sock.settimeout(self._socket_timeout)
        return super().handle(sock, address)


class WsgiServer:
    """Base class of WSGI applications that log their requests and responses.

    Subclasses implement :meth:`handle`.  Use an instance as the application
    of any WSGI server, or let :meth:`build_server` create a gevent one.
    """

    #: Seconds a connection may stay silent: during the TLS handshake, while
    #: waiting for the next request on a kept-alive connection, and during
    #: each read of a request.  ``None`` waits for ever.
    #:
    #: .. versionadded:: 0.1.0
    socket_timeout: ClassVar[float | None] = 60.0

    def build_server(
        self, listener: Any, pool: Pool | None = None, ssl_args: dict[str, Any] | None = None
    ) -> _GeventWSGIServer:
        """Create a :class:`gevent.pywsgi.WSGIServer` that serves this object.

        The listening socket is bound here, so a port of ``0`` can be read
        back from the server's ``address`` before it is started.

        Args:
            listener: An ``(ip, port)`` tuple to listen on, or a bound,
                listening socket.
            pool: A :class:`gevent.pool.Pool` for the connection greenlets,
                bounding how many connections are served at once.
            ssl_args: TLS settings, given to the server as keyword
                arguments; ``{'ssl_context': context}`` encrypts every
                connection with an :class:`ssl.SSLContext` (a stdlib or a
                gevent one).

        Returns:
            The server, not yet started.
        """
        kwargs: dict[str, Any] = dict(ssl_args or {})
        if isinstance(listener, tuple):
            kwargs["backlog"] = LISTEN_BACKLOG
        server = _HardenedWSGIServer(
            listener,
            self,
            spawn=pool if pool is not None else "default",
            log=None,
            error_log=_errors,
            socket_timeout=self.socket_timeout,
            **kwargs,
        )
        server.init_socket()
        return server

    def handle(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Answer one request; subclasses must override this.

        Use it as a WSGI application function.

        Args:
            environ: The WSGI environment of the request.
            start_response: The WSGI ``start_response`` callable.

        Returns:
            The response body, as an iterable of bytes.
        """
        raise NotImplementedError()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Log the request, then answer it with :meth:`handle`, logging the response."""
        log.wsgi_request(environ)

        def logged_start_response(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            log.wsgi_response(environ, status, headers)
            return start_response(status, headers, *args)

        return self.handle(environ, logged_start_response)
