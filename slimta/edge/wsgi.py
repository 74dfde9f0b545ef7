"""Receive mail over HTTP: an edge that is a WSGI application.

A client submits one message per request: ``POST`` with a
``message/rfc822`` body and the SMTP envelope in headers, each address
base64-encoded UTF-8::

    POST / HTTP/1.1
    Content-Type: message/rfc822
    Content-Length: 1234
    X-Ehlo: client.example.com
    X-Envelope-Sender: c2VuZGVyQGV4YW1wbGUuY29t
    X-Envelope-Recipient: cmNwdDFAZXhhbXBsZS5jb20=, cmNwdDJAZXhhbXBsZS5jb20=

``X-Envelope-Recipient`` may be repeated, or list several addresses
separated by commas (or semicolons).  :class:`~slimta.relay.http.HttpRelay`
is the matching client, so slimta nodes can pass mail to each other through
ordinary HTTP load balancers.

The edge answers only once the queue has stored the message (or refused
it), with the SMTP reply in an ``X-Smtp-Reply`` header
(``250; message="2.6.0 Message accepted for delivery"``) and this status:

=====================  ===================================================
``204 No Content``     accepted (reply ``2xx``)
``503 Unavailable``    temporary failure (reply ``4xx``): try again later
``500 Server Error``   permanent failure (reply ``5xx``)
``401 Unauthorized``   reply ``535`` (set by a validator)
``400 Bad Request``    malformed envelope headers: bad base64 or UTF-8, an
                       address that breaks the RFC 5321 grammar (control
                       characters, CR or LF included), no recipients
``404 Not Found``      the path does not match ``uri_pattern``
``405 Not Allowed``    not a ``POST``
``408 Timeout``        the body did not arrive within
                       :attr:`WsgiEdge.data_timeout`
``411 Length Req.``    neither ``Content-Length`` nor chunked encoding
``413 Too Large``      the body is larger than ``max_size``
``415 Unsupported``    the body is not ``message/rfc822``
=====================  ===================================================

Bodies are read with a cap: a declared ``Content-Length`` above the limit is
refused before anything is read, a chunked body is counted as it arrives,
and a client that disconnects mid-body gets nothing queued.  A refused body
is not drained without bound: the connection is closed instead (a declared
length of at most twice ``max_size`` is read and dropped first, so a client
still sending it sees the ``413`` rather than a reset).

:class:`WsgiResponse` and the HTTP helpers (reply to status, CGI header
names, abandoning a body) live in ``slimta.edge._wsgihttp`` and
:class:`WsgiResponse` is re-exported here; this module keeps the edge and
its validators.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from typing import TYPE_CHECKING, Any, ClassVar

import gevent
from gevent import Timeout

from slimta import logging as slimta_logging
from slimta.core import SlimtaError
from slimta.edge import Edge, EdgeServer
from slimta.envelope import Envelope, EnvelopeError
from slimta.http.wsgi import WsgiServer
from slimta.smtp._grammar import GrammarError, parse_path_argument
from slimta.smtp.reply import Reply

from ._wsgihttp import WsgiResponse, _abandon_input, _bad_request, _header_name_to_cgi, _smtp_response

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable, Sequence

    from gevent.pool import Pool

__all__ = ["WsgiEdge", "WsgiResponse", "WsgiValidators"]

#: The largest message body accepted by default, in octets (Postfix's
#: ``message_size_limit``).
#:
#: .. versionadded:: 0.1.0
DEFAULT_MAX_SIZE = 10240000

_READ_SIZE = 65536
_CTL = re.compile(r"[\x00-\x1f\x7f]")


class WsgiEdge(EdgeServer, WsgiServer):
    """An edge that receives messages as HTTP ``POST`` requests.

    The object is a WSGI application: give it to any WSGI server, or pass
    ``listener`` to have it serve itself with gevent's WSGI server (start
    it with :meth:`start`, like any :class:`~slimta.edge.EdgeServer`).

    Args:
        queue: The queue that stores received envelopes (its ``enqueue``).
        hostname: This MTA's name; see :class:`~slimta.edge.Edge`.
        validator_class: A :class:`WsgiValidators` subclass, instantiated
            for every request.
        uri_pattern: Only request paths matching this regular expression
            (a string or a compiled pattern, matched at the start of the
            path) are served; others get ``404``.
        listener: ``(ip, port)`` or a listening socket to serve on; ``None``
            builds no server (the object is then only a WSGI application).
        pool: A :class:`gevent.pool.Pool` bounding concurrent connections.
        context: An :class:`ssl.SSLContext` to serve HTTPS with.
        max_size: The largest message body accepted, in octets; larger
            bodies get ``413``.  ``None`` means :data:`DEFAULT_MAX_SIZE`.

            .. versionadded:: 0.1.0

    Attributes:
        server: The :class:`gevent.pywsgi.WSGIServer`, or ``None``.
    """

    #: Separates several base64 recipients in one header (and repeated
    #: headers, which WSGI servers join with commas).
    split_pattern: ClassVar[re.Pattern[str]] = re.compile(r"\s*[,;]\s*")

    #: The only HTTP method accepted.
    http_verb: ClassVar[str] = "POST"

    #: The header with the base64-encoded envelope sender.
    sender_header: ClassVar[str] = "X-Envelope-Sender"

    #: The header, repeatable, with base64-encoded envelope recipients.
    rcpt_header: ClassVar[str] = "X-Envelope-Recipient"

    #: The header with the client's EHLO name (not encoded).
    ehlo_header: ClassVar[str] = "X-Ehlo"

    #: Most recipients accepted in one request (Postfix's
    #: ``smtpd_recipient_limit``); more get ``400``.
    #:
    #: .. versionadded:: 0.1.0
    max_recipients: ClassVar[int] = 1000

    #: Messages with more ``Received`` headers than this are refused with
    #: ``554 5.4.6`` (a mail loop), as :class:`~slimta.edge.smtp.SmtpEdge`
    #: does.
    #:
    #: .. versionadded:: 0.1.0
    max_hops: ClassVar[int] = 50

    #: Seconds allowed for receiving a whole request body; ``None`` for no
    #: limit beyond :attr:`~slimta.http.wsgi.WsgiServer.socket_timeout`.
    #:
    #: .. versionadded:: 0.1.0
    data_timeout: ClassVar[float | None] = 600.0

    def __init__(
        self,
        queue: Any,
        hostname: str | None = None,
        validator_class: type[WsgiValidators] | None = None,
        uri_pattern: str | re.Pattern[str] | None = None,
        listener: Any = None,
        pool: Pool | None = None,
        context: ssl.SSLContext | None = None,
        *,
        max_size: int | None = None,
    ) -> None:
        # EdgeServer's constructor builds a plain StreamServer; ours is a
        # WSGI server (or none at all), so set up its two bases directly.
        Edge.__init__(self, queue, hostname)
        gevent.Greenlet.__init__(self)
        self.validator_class = validator_class
        if isinstance(uri_pattern, str):
            uri_pattern = re.compile(uri_pattern)
        self.uri_pattern: re.Pattern[str] | None = uri_pattern
        self.max_size = DEFAULT_MAX_SIZE if max_size is None else max_size
        if listener is not None:
            ssl_args = {"ssl_context": context} if context is not None else None
            self.server: Any = self.build_server(listener, pool, ssl_args)
        else:
            self.server = None

    def _run(self) -> None:
        if self.server is not None:
            self.server.serve_forever()

    def kill(self, *args: Any, **kwargs: Any) -> None:
        """Stop the server (if any) and the greenlet."""
        if self.server is not None:
            self.server.stop()
        gevent.Greenlet.kill(self, *args, **kwargs)

    # -- the request ---------------------------------------------------------

    def handle(  # type: ignore[override]
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Answer one submission; see the module documentation.

        Args:
            environ: The WSGI environment.
            start_response: The WSGI ``start_response`` callable.

        Returns:
            The response body.
        """
        try:
            response = self._process(environ)
        except WsgiResponse as exc:
            response = exc
        except Exception:  # noqa: BLE001 - a bug answers this request 503; the server goes on
            slimta_logging.log_exception(__name__)
            response = _smtp_response(Reply("451", "4.3.0 Unhandled error"))
            _abandon_input(environ)
            response.headers.append(("Connection", "close"))
        headers = response.headers
        if not response.status.startswith("204"):
            headers.append(("Content-Length", str(sum(len(part) for part in response.data))))
        start_response(response.status, headers)
        return response.data

    def _process(self, environ: dict[str, Any]) -> WsgiResponse:
        self._validate_request(environ)
        ehlo = self._get_ehlo(environ)
        sender = self._get_sender(environ)
        recipients = self._get_recipients(environ)
        if self.validator_class is not None:
            self._run_validators(environ, ehlo, sender, recipients)
        envelope = Envelope(sender, recipients)
        try:
            envelope.parse(self._read_body(environ))
        except EnvelopeError as exc:
            raise _bad_request("554", "5.6.0 Unparseable message") from exc
        hops = envelope.count_headers("Received")
        if hops > self.max_hops:
            reply = Reply("554", f"5.4.6 Too many hops ({hops} Received headers), probable mail loop")
            return _smtp_response(reply)
        self._add_envelope_extras(environ, envelope, ehlo)
        return _smtp_response(self._enqueue_envelope(envelope))

    def _validate_request(self, environ: dict[str, Any]) -> None:
        if self.uri_pattern is not None and not self.uri_pattern.match(environ.get("PATH_INFO", "")):
            raise WsgiResponse("404 Not Found")
        if str(environ.get("REQUEST_METHOD", "")).upper() != self.http_verb:
            raise WsgiResponse("405 Method Not Allowed", [("Allow", self.http_verb)])
        ctype = str(environ.get("CONTENT_TYPE") or "message/rfc822")
        if ctype.partition(";")[0].strip().lower() != "message/rfc822":
            raise WsgiResponse("415 Unsupported Media Type")
        length = self._content_length(environ)
        if length is None and not self._is_chunked(environ):
            raise WsgiResponse("411 Length Required")
        if length is not None and length > self.max_size:
            # Refused before reading a byte.  A body at most twice the limit
            # is drained after the response (so a client still writing it
            # reads the 413 instead of a reset); a larger one is abandoned.
            if length > 2 * self.max_size:
                _abandon_input(environ)
            reply = Reply("552", f"5.3.4 Message exceeds the size limit of {self.max_size} octets")
            response = _smtp_response(reply, "413 Payload Too Large")
            response.headers.append(("Connection", "close"))
            raise response

    @staticmethod
    def _content_length(environ: dict[str, Any]) -> int | None:
        raw = environ.get("CONTENT_LENGTH")
        if raw is None or raw == "":
            return None
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            raise WsgiResponse("400 Bad Request", [("Connection", "close")])
        return length

    @staticmethod
    def _is_chunked(environ: dict[str, Any]) -> bool:
        # Without Content-Length, only chunked framing delimits a request
        # body (RFC 9112 6.3); the WSGI server de-chunks it for us.
        return "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()

    def _run_validators(self, environ: dict[str, Any], ehlo: str, sender: str, recipients: list[str]) -> None:
        assert self.validator_class is not None
        validators = self.validator_class(environ)
        validators.validate_ehlo(ehlo)
        validators.validate_sender(sender)
        for rcpt in recipients:
            validators.validate_recipient(rcpt)
        for name in validators.custom_headers:
            validators.validate_custom(name, environ.get(_header_name_to_cgi(name)))

    # -- envelope headers ----------------------------------------------------

    @staticmethod
    def _b64decode(value: str, what: str) -> str:
        try:
            return b64decode(value.encode("ascii"), validate=True).decode("utf-8")
        except (UnicodeError, binascii.Error, ValueError) as exc:
            raise _bad_request("501", f"5.5.4 Invalid {what} header: bad base64 or UTF-8") from exc

    @staticmethod
    def _check_address(address: str, what: str, *, allow_null: bool) -> str:
        # The SMTP edge's own RFC 5321 grammar: no control characters (so no
        # CR/LF to inject headers or commands downstream), sane lengths.
        try:
            path, rest = parse_path_argument(f"X:<{address}>", "X", allow_null=allow_null)
        except GrammarError as exc:
            raise _bad_request("501", f"5.1.7 Invalid {what} address: {exc}") from exc
        if rest:
            raise _bad_request("501", f"5.1.7 Invalid {what} address: garbage after address")
        return path

    def _get_sender(self, environ: dict[str, Any]) -> str:
        raw = str(environ.get(_header_name_to_cgi(self.sender_header), "")).strip()
        sender = self._b64decode(raw, "sender")
        return self._check_address(sender, "sender", allow_null=True)

    def _get_recipients(self, environ: dict[str, Any]) -> list[str]:
        raw = str(environ.get(_header_name_to_cgi(self.rcpt_header), "")).strip()
        parts = [part for part in self.split_pattern.split(raw) if part] if raw else []
        if not parts:
            raise _bad_request("554", "5.5.1 No valid recipients")
        if len(parts) > self.max_recipients:
            raise _bad_request("554", "5.5.3 Too many recipients")
        return [
            self._check_address(self._b64decode(part, "recipient"), "recipient", allow_null=False)
            for part in parts
        ]

    def _get_ehlo(self, environ: dict[str, Any]) -> str:
        ehlo = environ.get(_header_name_to_cgi(self.ehlo_header))
        if ehlo is None:
            return "[{}]".format(environ.get("REMOTE_ADDR", "unknown"))
        ehlo = str(ehlo).strip()
        if not ehlo or len(ehlo) > 255 or _CTL.search(ehlo):
            raise _bad_request("501", "5.5.4 Invalid EHLO header")
        return ehlo

    # -- the body ------------------------------------------------------------

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        stream = environ["wsgi.input"]
        length = self._content_length(environ)
        timer = Timeout(self.data_timeout)
        timer.start()
        try:
            if length is not None:
                data: bytes = stream.read(length) if length else b""
                if len(data) < length:
                    raise OSError("connection closed mid-body")
                return data
            return self._read_chunked(environ, stream)
        except Timeout as exc:
            if exc is not timer:
                raise
            _abandon_input(environ)
            reply = Reply("451", "4.4.2 Timed out waiting for the message body")
            response = _smtp_response(reply, "408 Request Timeout")
            response.headers.append(("Connection", "close"))
            raise response from None
        except OSError as exc:
            # The client went away or sent broken chunks: nothing is queued.
            _abandon_input(environ)
            response = _bad_request("451", "4.4.2 Incomplete message body")
            response.headers.append(("Connection", "close"))
            raise response from exc
        finally:
            timer.close()

    def _read_chunked(self, environ: dict[str, Any], stream: Any) -> bytes:
        chunks: list[bytes] = []
        total = 0
        limit = self.max_size
        while True:
            chunk: bytes = stream.read(min(_READ_SIZE, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                _abandon_input(environ)
                reply = Reply("552", f"5.3.4 Message exceeds the size limit of {limit} octets")
                response = _smtp_response(reply, "413 Payload Too Large")
                response.headers.append(("Connection", "close"))
                raise response
            chunks.append(chunk)

    # -- queueing ------------------------------------------------------------

    def _add_envelope_extras(self, environ: dict[str, Any], envelope: Envelope, ehlo: str) -> None:
        envelope.client["ip"] = environ.get("REMOTE_ADDR", "unknown")
        envelope.client["host"] = None
        envelope.client["name"] = ehlo
        envelope.client["protocol"] = str(environ.get("wsgi.url_scheme", "http")).upper()

    def _enqueue_envelope(self, envelope: Envelope) -> Reply:
        results = self.handoff(envelope)
        for _, outcome in results:
            if isinstance(outcome, SlimtaError):
                error_reply = getattr(outcome, "reply", None)
                if isinstance(error_reply, Reply) and error_reply.code:
                    return error_reply
                return Reply("451", "4.3.0 Error queuing message")
        ids = ", ".join(str(outcome) for _, outcome in results)
        if ids:
            return Reply("250", f"2.6.0 Message accepted for delivery (queued as {ids})")
        return Reply("250", "2.6.0 Message accepted for delivery")


class WsgiValidators:
    """Base class of the checks a :class:`WsgiEdge` runs on each request.

    An instance is created per request, after the method, path and content
    type were accepted and before the body is read.  To refuse the request,
    raise :class:`WsgiResponse` from a method (for example
    ``WsgiResponse('403 Forbidden')``).

    Args:
        environ: The WSGI environment of the request.

    Attributes:
        environ: The environment given.
    """

    #: Names of request headers passed to :meth:`validate_custom`, once
    #: each, whether the client sent them or not.
    custom_headers: ClassVar[Sequence[str]] = ()

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    def validate_ehlo(self, ehlo: str) -> None:
        """Check the client's EHLO name (the ``X-Ehlo`` header).

        Args:
            ehlo: The header's value, or ``'[client IP]'`` when absent.
        """

    def validate_sender(self, sender: str) -> None:
        """Check the envelope sender (decoded ``X-Envelope-Sender``).

        Args:
            sender: The address; ``''`` for the null sender.
        """

    def validate_recipient(self, recipient: str) -> None:
        """Check one envelope recipient; called once per recipient.

        Args:
            recipient: The decoded address.
        """

    def validate_custom(self, name: str, value: str | None) -> None:
        """Check one header listed in :attr:`custom_headers`.

        Args:
            name: The header name, as listed.
            value: The header's raw value, or ``None`` if it was not sent.
        """
