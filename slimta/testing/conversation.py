"""Talk SMTP to your validators in a test, with no network: :class:`SmtpConversation`.

A conversation runs a real :class:`~slimta.edge.smtp.SmtpEdge` session (the
edge's own ``handle``, so :class:`~slimta.edge.smtp.SmtpSession`, the
:class:`~slimta.smtp.server.Server` and your
:class:`~slimta.edge.smtp.SmtpValidators` subclass all run as in
production) on one end of an in-process socket pair, in a greenlet, and
drives a :class:`~slimta.smtp.client.Client` on the other end.  Each method
sends one command and returns the server's
:class:`~slimta.smtp.reply.Reply`::

    with SmtpConversation(MyValidators) as conv:
        assert conv.ehlo().code == "250"
        assert conv.mail("a@example.com").code == "250"
        assert conv.rcpt("b@example.net").code == "550"

Messages the edge accepts are handed to a :class:`RecordingQueue`, kept in
:attr:`SmtpConversation.envelopes`.  No network port is ever opened.

Every call waits at most :attr:`SmtpConversation.timeout` seconds and then
raises :class:`~slimta.testing.HelperTimeout`; a call after the
conversation ended raises :class:`~slimta.testing.ConversationClosed`.  An
exception raised by one of your validator hooks (which the server answers
with ``421`` and logs) is raised again in the test by the call during
which it happened, so a bug in a hook shows up with its traceback.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import socket as _stdlib_socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
import gevent.socket
from gevent import Timeout

from slimta.edge.smtp import SmtpEdge, SmtpSession, SmtpValidators
from slimta.smtp import ConnectionLost
from slimta.smtp.client import Client
from slimta.smtp.reply import Reply
from slimta.testing._errors import ConversationClosed, HelperTimeout

if TYPE_CHECKING:
    import ssl
    from types import TracebackType

    from slimta.envelope import Envelope
    from slimta.smtp.extensions import Extensions

__all__ = ["RecordingQueue", "SmtpConversation"]

_T = TypeVar("_T")

#: The hostname of the server side (banner, certificate, ``envelope.receiver``).
DEFAULT_HOSTNAME = "mx.example.test"
#: The address the server side believes the client connects from (TEST-NET-1).
DEFAULT_CLIENT_ADDRESS = ("192.0.2.1", 50025)


class RecordingQueue:
    """A stand-in for :class:`~slimta.queue.Queue` that keeps what it is given.

    Args:
        queue: Optionally, a real queue (anything with ``enqueue``) to pass
            each envelope on to, e.g. one with your queue policies; its
            results are returned to the edge.

    Attributes:
        envelopes: Every envelope the edge handed over, in order.
        results: What ``enqueue`` returned for each, in order.
        error: When set (e.g. to a :class:`~slimta.queue.QueueError`), each
            envelope is refused with it instead of being queued, so the
            edge's reply to a storage failure can be tested.
        errors: Exceptions raised by the wrapped ``queue``.
    """

    def __init__(self, queue: Any = None) -> None:
        self.queue = queue
        self.envelopes: list[Envelope] = []
        self.results: list[list[tuple[Envelope, Any]]] = []
        self.error: BaseException | None = None
        self.errors: list[Exception] = []

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, Any]]:
        """Record ``envelope`` and return ``[(envelope, id)]`` (or the error)."""
        self.envelopes.append(envelope)
        if self.error is not None:
            results: list[tuple[Envelope, Any]] = [(envelope, self.error)]
        elif self.queue is not None:
            try:
                results = self.queue.enqueue(envelope)
            except Exception as exc:
                self.errors.append(exc)
                raise
        else:
            results = [(envelope, f"test-id-{len(self.envelopes)}")]
        self.results.append(results)
        return results


def _watched_validators(
    validator_class: type[SmtpValidators], errors: list[Exception]
) -> type[SmtpValidators]:
    """Subclass ``validator_class`` so that exceptions from its hooks are recorded."""

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def hook(self: SmtpValidators, *args: Any) -> Any:
            try:
                return method(self, *args)
            except Exception as exc:
                exc.add_note(f"(raised by {validator_class.__name__}.{name} during an SmtpConversation)")
                errors.append(exc)
                raise

        hook.__name__ = name
        return hook

    hooks = {
        name: wrap(name, getattr(validator_class, name))
        for name in dir(validator_class)
        if name.startswith("handle_") and callable(getattr(validator_class, name))
    }
    return type(validator_class.__name__, (validator_class,), hooks)


def _format_params(params: Mapping[str, str | bool] | None) -> str:
    if not params:
        return ""
    return "".join(
        f" {key}" if value is True else f" {key}={value}" for key, value in params.items() if value
    )


class SmtpConversation:
    """One SMTP session between a test and a real, in-process SmtpEdge.

    The session starts at once: the banner is read by the constructor and
    kept in :attr:`banner`.  Use it as a context manager, or call
    :meth:`close` (or :meth:`quit`) when done.

    Args:
        validator_class: Your :class:`~slimta.edge.smtp.SmtpValidators`
            subclass, or None.
        auth: As for :class:`~slimta.edge.smtp.SmtpEdge`: True, or a list
            of SASL mechanism names, to offer AUTH.
        tls: Offer STARTTLS with a throw-away certificate for ``hostname``
            made at run time (needs ``trustme``, part of ``slimta[test]``).
        tls_immediately: Encrypt before the banner (port 465 style);
            implies ``tls``.
        queue: A real queue to pass accepted envelopes on to (through the
            :class:`RecordingQueue`); by default they are only recorded.
        hostname: The server's name.
        client_address: The ``(ip, port)`` the session sees the client as.
        max_size: The edge's ``max_size``.
        timeout: The longest wait, in seconds, for each call.
        command_timeout: The server's ``command_timeout`` (default 60).
        data_timeout: The server's ``data_timeout``.
        context: Your own server :class:`ssl.SSLContext` (instead of
            ``tls``); pass ``client_context`` too.
        client_context: The context the client side uses for STARTTLS.
        edge_class: :class:`~slimta.edge.smtp.SmtpEdge` or your subclass.
        session_class: The edge's ``session_class``.
        raise_errors: Raise an exception from a validator hook again in the
            test (default True).  Turn off to test the ``421`` reply.

    Raises:
        HelperError: ``tls`` was asked for without trustme installed.
        HelperTimeout: No banner came within ``timeout``.

    Attributes:
        banner: The server's greeting :class:`~slimta.smtp.reply.Reply`.
        queue: The :class:`RecordingQueue`.
        session: The edge's :class:`~slimta.edge.smtp.SmtpSession`.
        server_errors: Exceptions raised by validator hooks or by ``queue``.
        last_reply: The last reply received.
    """

    def __init__(
        self,
        validator_class: type[SmtpValidators] | None = None,
        *,
        auth: bool | list[str] = False,
        tls: bool = False,
        tls_immediately: bool = False,
        queue: Any = None,
        hostname: str = DEFAULT_HOSTNAME,
        client_address: tuple[str, int] = DEFAULT_CLIENT_ADDRESS,
        max_size: int | None = None,
        timeout: float = 5.0,
        command_timeout: float | None = 60.0,
        data_timeout: float | None = None,
        context: ssl.SSLContext | None = None,
        client_context: ssl.SSLContext | None = None,
        edge_class: type[SmtpEdge] = SmtpEdge,
        session_class: type[SmtpSession] = SmtpSession,
        raise_errors: bool = True,
    ) -> None:
        self.timeout = timeout
        self.hostname = hostname
        self.raise_errors = raise_errors
        self.server_errors: list[Exception] = []
        self._reported = 0
        self.queue = RecordingQueue(queue)
        self.queue.errors = self.server_errors
        self.session: SmtpSession | None = None
        self.last_reply: Reply | None = None
        self._closed_why: str | None = None
        if (tls or tls_immediately) and context is None:
            from slimta.testing import _tls  # trustme is only needed for TLS

            context = _tls.server_context(hostname)
            client_context = client_context or _tls.client_context()
        self.client_context = client_context
        self.edge = self._make_edge(
            edge_class,
            session_class,
            validator_class,
            auth=auth,
            context=context,
            tls_immediately=tls_immediately,
            max_size=max_size,
            command_timeout=command_timeout,
            data_timeout=data_timeout,
        )
        server_sock, client_sock = gevent.socket.socketpair()
        self._server = gevent.spawn(self.edge.handle, server_sock, client_address)
        self.client = Client(client_sock, (hostname, 25))
        # The server's AUTH decisions are what a test wants to see, so the
        # client never refuses a mechanism by itself (the server answers 538).
        self.client.allow_cleartext_auth = True
        if tls_immediately:
            self._call("the TLS handshake", self._encrypt)
        self.banner: Reply = self._call("the banner", self.client.get_banner)

    def _make_edge(
        self,
        edge_class: type[SmtpEdge],
        session_class: type[SmtpSession],
        validator_class: type[SmtpValidators] | None,
        **kwargs: Any,
    ) -> SmtpEdge:
        conversation = self

        class _Session(session_class):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, **kw)
                conversation.session = self

        if validator_class is not None:
            validator_class = _watched_validators(validator_class, self.server_errors)
        # An unbound Unix socket: EdgeServer wants a listener, but the edge
        # is never started; sessions are run by calling its handle().
        self._listener = gevent.socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
        return edge_class(
            self._listener,
            self.queue,
            validator_class=validator_class,
            hostname=self.hostname,
            session_class=_Session,
            **kwargs,
        )

    # -- plumbing --------------------------------------------------------------

    def _call(self, what: str, func: Callable[..., _T], *args: Any) -> _T:
        if self._closed_why is not None:
            raise ConversationClosed(f"cannot send {what}: the conversation was closed {self._closed_why}")
        timer = Timeout(self.timeout)
        timer.start()
        try:
            result = func(*args)
        except Timeout as exc:
            if exc is not timer:
                raise
            self._end("after a helper timeout")
            self._raise_server_error()
            raise HelperTimeout(
                f"no reply to {what} within {self.timeout} s (is a validator hook or the queue blocking?)"
            ) from None
        except ConnectionLost as exc:
            last = f"; the last reply was {self.last_reply}" if self.last_reply else ""
            self._end(f"by the server{last}")
            self._raise_server_error()
            raise ConversationClosed(
                f"cannot complete {what}: the server closed the connection{last}"
            ) from exc
        finally:
            timer.cancel()
        if isinstance(result, Reply):
            self.last_reply = result
        self._raise_server_error()
        return result

    def _raise_server_error(self) -> None:
        if not self.raise_errors or len(self.server_errors) <= self._reported:
            return
        error = self.server_errors[self._reported]
        self._reported = len(self.server_errors)
        raise error

    def _encrypt(self) -> None:
        self.client.encrypt(self.client_context, self.hostname)

    def _end(self, why: str) -> None:
        if self._closed_why is not None:
            return
        self._closed_why = why
        self.client.io.close()
        self._listener.close()
        self._server.join(self.timeout)
        if not self._server.dead:
            self._server.kill(block=True, timeout=self.timeout)

    # -- properties ------------------------------------------------------------

    @property
    def envelopes(self) -> list[Envelope]:
        """The envelopes the edge handed to the queue, in order."""
        return self.queue.envelopes

    @property
    def extensions(self) -> Extensions:
        """What the server offered in its last EHLO reply."""
        return self.client.extensions

    @property
    def encrypted(self) -> bool:
        """True once the conversation runs over TLS."""
        return bool(self.client.io.encrypted)

    @property
    def closed(self) -> bool:
        """True once the conversation has ended."""
        return self._closed_why is not None

    # -- commands --------------------------------------------------------------

    def ehlo(self, name: str = "client.example.test") -> Reply:
        """Send ``EHLO name``; :attr:`extensions` then holds what is offered."""
        return self._call("EHLO", self.client.ehlo, name)

    def helo(self, name: str = "client.example.test") -> Reply:
        """Send ``HELO name``."""
        return self._call("HELO", self.client.helo, name)

    def starttls(self) -> Reply:
        """Send STARTTLS and, on ``220``, run the TLS handshake.

        Send :meth:`ehlo` again afterwards, as a real client must.

        Raises:
            TlsHandshakeFailed: The handshake failed (see
                :class:`slimta.smtp.client.TlsHandshakeFailed`).
        """
        return self._call("STARTTLS", self.client.starttls, self.client_context, self.hostname)

    def auth(
        self, user: str, password: str, mechanism: str | None = None, authzid: str | None = None
    ) -> Reply:
        """Authenticate (the whole SASL exchange); returns the final reply.

        Args:
            user: The authentication identity.
            password: The secret.
            mechanism: ``"PLAIN"``, ``"LOGIN"``, ``"CRAM-MD5"``...; by default
                the best one offered.
            authzid: The identity to act as, if not ``user``.
        """
        return self._call(
            f"AUTH {mechanism or ''}".strip(), self.client.auth, user, password, authzid, mechanism
        )

    def mail(self, sender: str, params: Mapping[str, str | bool] | None = None) -> Reply:
        """Send ``MAIL FROM:<sender>`` with optional ESMTP parameters (``{"SIZE": "10"}``)."""
        return self._call(
            "MAIL", self.client.custom_command, "MAIL", f"FROM:<{sender}>{_format_params(params)}"
        )

    def rcpt(self, recipient: str, params: Mapping[str, str | bool] | None = None) -> Reply:
        """Send ``RCPT TO:<recipient>`` with optional ESMTP parameters."""
        return self._call(
            "RCPT", self.client.custom_command, "RCPT", f"TO:<{recipient}>{_format_params(params)}"
        )

    def data(self, message: bytes) -> Reply:
        """Send DATA and then ``message``; returns the final reply.

        The message is dot-stuffed and its line endings made CRLF.  If the
        server does not answer DATA with ``354``, that reply is returned and
        the message is not sent.
        """
        reply = self._call("DATA", self.client.data)
        if reply.code != "354":
            return reply
        return self._call("the message data", self.client.send_data, message)

    def bdat(self, message: bytes) -> Reply:
        """Send ``message`` in one ``BDAT <size> LAST`` chunk (RFC 3030)."""
        return self._call("BDAT", self.client.send_bdat, message)

    def rset(self) -> Reply:
        """Send RSET."""
        return self._call("RSET", self.client.rset)

    def noop(self) -> Reply:
        """Send NOOP."""
        return self._call("NOOP", self.client.custom_command, "NOOP")

    def command(self, verb: str, arg: str | None = None) -> Reply:
        """Send any command line (``VERB arg``) and return its reply."""
        return self._call(verb.upper(), self.client.custom_command, verb, arg)

    def raw(self, data: bytes, replies: int = 1) -> list[Reply]:
        """Send ``data`` exactly as given and read ``replies`` replies.

        Use it for malformed or pipelined input.  With ``replies=0`` nothing
        is read.

        Raises:
            HelperTimeout: Fewer than ``replies`` replies came in time.
        """

        def run() -> list[Reply]:
            self.client.io.send(data)
            return [self.client.get_reply("[RAW]") for _ in range(replies)]

        result = self._call(f"{replies} repl{'y' if replies == 1 else 'ies'} to raw data", run)
        if result:
            self.last_reply = result[-1]
        return result

    def quit(self) -> Reply:
        """Send QUIT, then close the conversation."""
        reply = self._call("QUIT", self.client.quit)
        self._end("by quit()")
        return reply

    def close(self) -> None:
        """End the conversation (without QUIT); later calls raise ConversationClosed."""
        self._end("by close()")

    def __enter__(self) -> SmtpConversation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
