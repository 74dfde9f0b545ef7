"""The HTTP side of the WSGI edge: responses and request plumbing.

:class:`WsgiResponse` (the exception that ends a request with a response),
how an SMTP reply becomes an HTTP status and ``X-Smtp-Reply`` header, the
CGI name of a request header, and how a refused request body is abandoned
rather than drained.  These are HTTP mechanics, apart from the envelope and
queue logic of :class:`~slimta.edge.wsgi.WsgiEdge`;
:mod:`slimta.edge.wsgi` re-exports :class:`WsgiResponse` and is its public
home.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gevent.pywsgi import Input as _GeventInput

from slimta.core import SlimtaError
from slimta.http import _reply
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["WsgiResponse"]


class WsgiResponse(SlimtaError):
    """Raise this (from a validator, say) to end a request with a response.

    Args:
        status: The HTTP status line, e.g. ``'403 Forbidden'``.
        headers: ``(name, value)`` response headers.
        data: The response body: bytes, or an iterable of bytes.

    Attributes:
        status: The status given.
        headers: The list of headers.
        data: The body, as a list of bytes.
    """

    def __init__(
        self,
        status: str,
        headers: Sequence[tuple[str, str]] | None = None,
        data: bytes | Iterable[bytes] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.headers: list[tuple[str, str]] = list(headers or [])
        if data is None:
            self.data: list[bytes] = []
        elif isinstance(data, bytes | bytearray):
            self.data = [bytes(data)]
        else:
            self.data = list(data)


def _header_name_to_cgi(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def _status_for(reply: Reply) -> str:
    code = reply.code or "451"
    if code[0] == "2":
        return "204 No Content"
    if code[0] == "4":
        return "503 Service Unavailable"
    if code == "535":
        return "401 Unauthorized"
    return "500 Internal Server Error"


def _smtp_response(reply: Reply, status: str | None = None) -> WsgiResponse:
    """Build the response carrying ``reply``; the status follows its code."""
    status = status or _status_for(reply)
    headers = [(_reply.HEADER, _reply.format_reply(reply))]
    if status.startswith("204"):
        return WsgiResponse(status, headers)
    body = (reply.message or "").encode("ascii", "replace") + b"\n"
    headers.append(("Content-Type", "text/plain"))
    return WsgiResponse(status, headers, body)


def _bad_request(code: str, message: str) -> WsgiResponse:
    return _smtp_response(Reply(code, message), "400 Bad Request")


def _abandon_input(environ: dict[str, Any]) -> None:
    """Make gevent's server close the connection instead of draining the body.

    After the application returns, gevent.pywsgi reads and discards whatever
    is left of the request body so the connection can carry another request.
    For a body we refused (too large, too slow, broken) that could be
    unbounded, so mark it consumed; the response says ``Connection: close``.
    """
    stream = environ.get("wsgi.input")
    if isinstance(stream, _GeventInput):
        stream.chunked_input = False
        stream.content_length = stream.position
