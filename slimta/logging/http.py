"""Log lines for HTTP requests and responses, as ``http:<id>:<operation>``.

The id is ``id()`` of a connection object (or of the WSGI ``environ``), so a
request and its response share it.  Credentials never reach the log: the
values of the headers in :data:`SECRET_HEADERS` are logged as
``<redacted>``.  Everything is logged at ``DEBUG``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from slimta.logging._format import format_line

__all__ = ["HttpLogger"]

#: Header names (lower case) whose values are never logged.
#:
#: .. versionadded:: 0.1.0
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

_REDACTED = "<redacted>"


def _safe_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, _REDACTED if name.lower() in SECRET_HEADERS else value) for name, value in headers]


def _environ_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rebuild the request headers from their CGI-style environ keys."""
    headers = []
    for key, value in environ.items():
        if key == "CONTENT_TYPE":
            headers.append(("Content-Type", value))
        elif key == "CONTENT_LENGTH":
            headers.append(("Content-Length", value))
        elif key.startswith("HTTP_"):
            name = "-".join(part.capitalize() for part in key[5:].split("_"))
            headers.append((name, value))
    return headers


class HttpLogger:
    """Log HTTP requests and responses, on the client or the server side.

    Obtain one with :func:`slimta.logging.getHttpLogger`.

    Args:
        log: The :class:`logging.Logger` to write to.
    """

    def __init__(self, log: logging.Logger) -> None:
        self.logger = log

    def wsgi_request(self, environ: Mapping[str, Any]) -> None:
        """Log a request received by a WSGI application.

        Args:
            environ: The WSGI environment of the request.
        """
        if self.logger.isEnabledFor(logging.DEBUG):
            method = str(environ["REQUEST_METHOD"]).upper()
            path = environ.get("PATH_INFO")
            self.request(environ, method, path, _environ_headers(environ), is_client=False)

    def wsgi_response(
        self, environ: Mapping[str, Any], status: str, headers: Iterable[tuple[str, str]]
    ) -> None:
        """Log the response a WSGI application gave.

        Args:
            environ: The WSGI environment of the request answered.
            status: The status line, e.g. ``'404 Not Found'``.
            headers: The response headers as ``(name, value)`` pairs.
        """
        self.response(environ, status, headers, is_client=False)

    def request(
        self,
        conn: object,
        method: str,
        path: str | None,
        headers: Iterable[tuple[str, str]],
        is_client: bool = True,
    ) -> None:
        """Log an HTTP request.

        Args:
            conn: Any object that identifies the exchange; pass the same one
                to :meth:`response`.
            method: The request method.
            path: The request path.
            headers: The request headers as ``(name, value)`` pairs.
            is_client: ``True`` for a request we send, ``False`` for one we
                received.
        """
        if self.logger.isEnabledFor(logging.DEBUG):
            operation = "client_request" if is_client else "server_request"
            data = {"method": method, "path": path, "headers": _safe_headers(headers)}
            self.logger.debug(format_line("http", id(conn), operation, data))

    def response(
        self,
        conn: object,
        status: str,
        headers: Iterable[tuple[str, str]],
        is_client: bool = True,
    ) -> None:
        """Log an HTTP response.

        Args:
            conn: The object given to the matching :meth:`request`.
            status: The status line, e.g. ``'200 OK'``.
            headers: The response headers as ``(name, value)`` pairs.
            is_client: ``True`` for a response we received, ``False`` for one
                we sent.
        """
        if self.logger.isEnabledFor(logging.DEBUG):
            operation = "client_response" if is_client else "server_response"
            data = {"status": status, "headers": _safe_headers(headers)}
            self.logger.debug(format_line("http", id(conn), operation, data))
