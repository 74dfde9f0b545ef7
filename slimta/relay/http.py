"""Deliver mail with HTTP requests, as :mod:`slimta.edge.wsgi` receives it.

:class:`HttpRelay` ``POST``\\ s each message to a URL with its envelope in
headers (``X-Envelope-Sender``, one ``X-Envelope-Recipient`` per recipient,
both base64-encoded UTF-8, and ``X-Ehlo``), over connections that are kept
alive and shared through a :class:`~slimta.relay.pool.RelayPool`.

The outcome comes from the response:

* a ``2xx`` status delivers the message; the ``X-Smtp-Reply`` header, if
  any, becomes the returned :class:`~slimta.smtp.reply.Reply`;
* otherwise an ``X-Smtp-Reply`` header with a ``4xx`` or ``5xx`` code
  decides: :class:`~slimta.relay.TransientRelayError` or
  :class:`~slimta.relay.PermanentRelayError` with that reply;
* without one, the status decides: ``4xx`` is permanent (the request
  itself is wrong: ``554 5.3.5`` for a wrong URL, method or type,
  ``552 5.3.4`` for a message too large, ``554 5.7.1`` when refused
  access), except ``408`` and ``429``, which are temporary; ``5xx`` and
  anything else are temporary (``451 4.3.0``);
* a timeout (``451 4.4.2``), a refused or broken connection
  (``451 4.4.1``) or a failed TLS handshake (``451 4.7.5``) is temporary.

A kept-alive connection the server has meanwhile closed is detected when
the request fails before any response arrives; the request is then sent
once more on a fresh connection.
"""

from __future__ import annotations

import http.client
import socket as _stdlib_socket
import ssl
from base64 import b64encode
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from gevent import Timeout

from slimta import logging as slimta_logging
from slimta.envelope import EnvelopeError
from slimta.http import _reply, get_connection
from slimta.logging import getHttpLogger
from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.relay.pool import RelayPool, RelayPoolClient
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from collections.abc import Callable

    from slimta.envelope import Envelope

__all__ = ["HttpRelay"]

log = getHttpLogger(__name__)

#: Bytes of a response body read at most; the edge sends a line of text.
_MAX_RESPONSE_BODY = 65536

# Failures of a reused connection that mean "the server closed it while it
# was idle": the request can be sent again on a new connection.
_STALE_ERRORS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

# Replies for a non-2xx status that came without an X-Smtp-Reply header.
_STATUS_REPLIES: dict[int, tuple[str, str]] = {
    401: ("554", "5.7.1"),
    403: ("554", "5.7.1"),
    404: ("554", "5.3.5"),
    405: ("554", "5.3.5"),
    411: ("554", "5.3.5"),
    413: ("552", "5.3.4"),
    415: ("554", "5.3.5"),
    408: ("451", "4.4.2"),
    429: ("451", "4.7.0"),
}


def _error_for_status(status: int, reason: str) -> RelayError:
    code, esc = _STATUS_REPLIES.get(status, ("554", "5.0.0") if 400 <= status < 500 else ("451", "4.3.0"))
    text = f"HTTP {status} {reason}".strip()
    reply = Reply(code, f"{esc} {text}")
    if code[0] == "5":
        return PermanentRelayError(text, reply)
    return TransientRelayError(text, reply)


class _Failure(Exception):
    """A delivery attempt ended in ``error``; ``stale`` says it may be retried."""

    def __init__(self, error: RelayError, *, stale: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.stale = stale


class HttpRelayClient(RelayPoolClient):
    """One pooled connection of an :class:`HttpRelay`; serves its requests.

    Args:
        relay: The relay whose queue and settings to use.
    """

    def __init__(self, relay: HttpRelay) -> None:
        super().__init__(relay.queue, relay.idle_timeout)
        self.relay = relay
        self.conn: http.client.HTTPConnection | None = None
        self.ehlo_as: str | None = None
        self._reused = False

    def _run(self) -> None:
        try:
            while True:
                result, envelope = self.poll()
                if result is None or envelope is None:
                    return
                try:
                    outcome = self._deliver(envelope)
                except RelayError as exc:
                    result.set_exception(exc)
                except EnvelopeError as exc:
                    reply = Reply("554", f"5.6.0 Message cannot be sent: {exc}")
                    result.set_exception(PermanentRelayError(str(exc), reply))
                except Exception as exc:  # noqa: BLE001 - a bug fails this delivery (retried), not the pool
                    slimta_logging.log_exception(__name__)
                    self._close()
                    result.set_exception(TransientRelayError(str(exc), Reply("451", "4.3.0 Unhandled error")))
                else:
                    result.set(outcome)
                self._current_result = None
                if not self.relay.idle_timeout:
                    # As in python-slimta: without an idle timeout a
                    # connection carries one message and is closed.
                    return
        finally:
            self._close()

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connect(self) -> http.client.HTTPConnection:
        conn = get_connection(self.relay.url, self.relay.context)
        ehlo_as = self.relay.ehlo_as
        self.ehlo_as = ehlo_as() if callable(ehlo_as) else ehlo_as
        self.conn = conn
        self._reused = False
        return conn

    def _deliver(self, envelope: Envelope) -> Reply | None:
        msg_headers, msg_body = envelope.flatten()
        timer = Timeout(self.relay.timeout)
        timer.start()
        try:
            try:
                return self._request(envelope, msg_headers, msg_body)
            except _Failure as failure:
                if not failure.stale:
                    raise
            # The kept-alive connection had been closed by the server.
            return self._request(envelope, msg_headers, msg_body)
        except _Failure as failure:
            raise failure.error from None
        except Timeout as exc:
            if exc is not timer:
                raise
            self._close()
            raise TransientRelayError(
                "Timed out", Reply("451", "4.4.2 Timed out delivering over HTTP")
            ) from None
        finally:
            timer.close()

    def _build_headers(self, envelope: Envelope, length: int) -> list[tuple[str, str]]:
        relay = self.relay
        headers = [
            ("Content-Length", str(length)),
            ("Content-Type", "message/rfc822"),
            (relay.ehlo_header, self.ehlo_as or ""),
            (relay.sender_header, _b64(envelope.sender or "")),
        ]
        headers.extend((relay.recipient_header, _b64(rcpt)) for rcpt in envelope.recipients)
        return headers

    def _request(self, envelope: Envelope, msg_headers: bytes, msg_body: bytes) -> Reply | None:
        conn = self.conn if self.conn is not None else self._connect()
        reused = self._reused
        path = self.relay.url.path or "/"
        headers = self._build_headers(envelope, len(msg_headers) + len(msg_body))
        try:
            log.request(conn, self.relay.http_verb, path, headers)
            conn.putrequest(self.relay.http_verb, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            # One write for the request head and the message header section;
            # the body follows in a second (http.client sends them apart
            # anyway, and copying a large body to join it costs more).
            conn.endheaders(msg_headers)
            if msg_body:
                conn.send(msg_body)
            response = conn.getresponse()
            # The edge answers with a line of text at most; a body longer
            # than this is left unread and the connection closed below.
            response.read(_MAX_RESPONSE_BODY)
        except ssl.SSLError as exc:
            self._close()
            raise _Failure(TransientRelayError(str(exc), Reply("451", f"4.7.5 TLS failure: {exc}"))) from exc
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            stale = reused and isinstance(exc, _STALE_ERRORS)
            reply = Reply("451", f"4.4.1 Connection failed: {str(exc) or type(exc).__name__}")
            raise _Failure(TransientRelayError(str(exc), reply), stale=stale) from exc
        status = f"{response.status} {response.reason}"
        log.response(conn, status, response.getheaders())
        if response.will_close or not response.isclosed():
            self._close()
        else:
            self._reused = True
        return self._outcome(response)

    @staticmethod
    def _outcome(response: http.client.HTTPResponse) -> Reply | None:
        reply = _reply.parse_reply(response.getheader(_reply.HEADER))
        if 200 <= response.status < 300:
            return reply
        if reply is not None and reply.code and reply.code[0] in "45":
            text = reply.message or reply.code
            if reply.code[0] == "5":
                raise _Failure(PermanentRelayError(text, reply))
            raise _Failure(TransientRelayError(text, reply))
        raise _Failure(_error_for_status(response.status, response.reason))


def _b64(text: str) -> str:
    return b64encode(text.encode("utf-8")).decode("ascii")


class HttpRelay(RelayPool):
    """Deliver messages with HTTP (or HTTPS) ``POST`` requests.

    Args:
        url: The URL to post to (``http://`` or ``https://``; a URL without
            a scheme is taken as ``http``).
        pool_size: The most connections open at once; ``None`` for no
            limit.  Attempts beyond it wait for a free connection.
        context: The :class:`ssl.SSLContext` for ``https`` URLs.  ``None``
            verifies the server against the system's trust store.
        ehlo_as: The name sent in ``X-Ehlo``, or a callable returning it
            (called for each new connection); defaults to this machine's
            fully qualified name.
        timeout: Seconds allowed for each whole delivery (connecting,
            sending and reading the response); ``None`` for no limit.
        idle_timeout: Seconds a connection is kept open waiting for the
            next message.  ``None`` (the python-slimta default) closes each
            connection after one message; set it to keep connections alive.
    """

    #: The HTTP method used.
    http_verb: ClassVar[str] = "POST"

    #: The header carrying the base64-encoded sender.
    sender_header: ClassVar[str] = "X-Envelope-Sender"

    #: The header carrying each base64-encoded recipient.
    recipient_header: ClassVar[str] = "X-Envelope-Recipient"

    #: The header carrying the EHLO name.
    ehlo_header: ClassVar[str] = "X-Ehlo"

    def __init__(
        self,
        url: str,
        pool_size: int | None = None,
        context: ssl.SSLContext | None = None,
        ehlo_as: str | Callable[[], str] | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        super().__init__(pool_size)
        self.url = urlsplit(url, "http")
        self.context = context
        self.ehlo_as: str | Callable[[], str] = ehlo_as or _stdlib_socket.getfqdn()
        self.timeout = timeout
        self.idle_timeout = idle_timeout

    def add_client(self) -> HttpRelayClient:
        """Create a client (one connection) for the pool."""
        return HttpRelayClient(self)

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        """Deliver ``envelope`` through the next free connection.

        Args:
            envelope: The envelope to deliver.
            attempts: How many earlier attempts the envelope had.

        Returns:
            The server's :class:`~slimta.smtp.reply.Reply` (from
            ``X-Smtp-Reply``), or ``None`` if it sent none.

        Raises:
            PermanentRelayError: The server refused the message for good.
            TransientRelayError: Delivery failed and may work later.
        """
        return super().attempt(envelope, attempts)
