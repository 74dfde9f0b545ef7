"""An in-process SMTP server for testing relays end to end: :class:`RecordingSmtpPeer`.

The peer is a real :class:`slimta.smtp.server.Server` reached through a
``socket_creator`` that returns one end of an in-process socket pair, so
an SMTP relay delivers to it with no network port::

    peer = RecordingSmtpPeer()
    relay = StaticSmtpRelay("peer.example.test", socket_creator=peer.socket_creator)
    relay.attempt(make_envelope(), 0)
    peer.wait_for_messages(1)
    assert peer.messages[0].recipients == ["rcpt@example.com"]

It keeps every message, and the exact bytes it received on each
connection (after TLS decryption).  Replies can be scripted per command
and per address with :meth:`RecordingSmtpPeer.set_reply`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket
from gevent.event import Event

from slimta.smtp import ConnectionLost
from slimta.smtp.io import IO
from slimta.smtp.server import Server
from slimta.testing._errors import HelperError, HelperTimeout
from slimta.testing._wait import wait_until

if TYPE_CHECKING:
    import ssl
    from types import TracebackType

    from slimta.smtp.reply import Reply

__all__ = ["PeerConnection", "PeerMessage", "RecordingSmtpPeer"]

#: Commands whose replies :meth:`RecordingSmtpPeer.set_reply` can script.
SCRIPTABLE = frozenset(
    {"BANNER", "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "HAVE_DATA", "RSET"}
)


@dataclass
class PeerMessage:
    """A message the peer accepted.

    Attributes:
        sender: The ``MAIL FROM`` address.
        recipients: The recipients the peer accepted.
        data: The message exactly as received (dot-unstuffed).
        ehlo_as: The name the client gave in EHLO/HELO.
        encrypted: True if the message came over TLS.
        auth: The identity the client authenticated as, or None.
    """

    sender: str
    recipients: list[str]
    data: bytes
    ehlo_as: str | None
    encrypted: bool
    auth: str | None


@dataclass
class PeerConnection:
    """One connection made to the peer.

    Attributes:
        address: The address given to ``socket_creator``.
        received: Every byte the peer read, in order (plaintext after TLS).
        sent: Every byte the peer wrote.
        encrypted: True once the connection runs over TLS.
        closed: True once the session has ended.
    """

    address: Any
    received: bytearray = field(default_factory=bytearray)
    sent: bytearray = field(default_factory=bytearray)
    encrypted: bool = False
    closed: bool = False


@dataclass
class _Rule:
    code: str
    message: str
    address: str | None
    times: int | None


class _RecordingIO(IO):
    """The server's socket I/O, keeping a copy of every byte in both directions."""

    def __init__(self, socket: Any, address: Any, connection: PeerConnection) -> None:
        super().__init__(socket, address)
        self.connection = connection

    def recv(self) -> bytes:
        data = super().recv()
        self.connection.received += data
        return data

    def send(self, data: bytes) -> None:
        self.connection.sent += data
        super().send(data)


class _PeerHandlers:
    """The server hooks of one peer connection: record and apply scripted replies."""

    def __init__(self, peer: RecordingSmtpPeer, connection: PeerConnection, server: Server) -> None:
        self.peer = peer
        self.connection = connection
        self.server = server
        self.ehlo_as: str | None = None
        self.auth: str | None = None
        self.sender: str | None = None
        self.recipients: list[str] = []

    def BANNER_(self, reply: Reply) -> None:  # noqa: N802 - a Server hook
        self.peer._apply("BANNER", reply, None)

    def EHLO(self, reply: Reply, ehlo_as: str) -> None:  # noqa: N802 - a Server hook
        self.peer._apply("EHLO", reply, ehlo_as)
        self.ehlo_as = ehlo_as

    def HELO(self, reply: Reply, helo_as: str) -> None:  # noqa: N802 - a Server hook
        self.peer._apply("HELO", reply, helo_as)
        self.ehlo_as = helo_as

    def STARTTLS(self, reply: Reply, extensions: Any) -> None:  # noqa: N802 - a Server hook
        self.peer._apply("STARTTLS", reply, None)

    def TLSHANDSHAKE(self) -> None:  # noqa: N802 - a Server hook
        self.connection.encrypted = True

    def AUTH(self, reply: Reply, creds: Any) -> None:  # noqa: N802 - a Server hook
        secret = self.peer.credentials.get(creds.authcid)
        if secret is None or not creds.check_secret(secret):
            reply.code = "535"
            reply.message = "5.7.8 Authentication credentials invalid"
        self.peer._apply("AUTH", reply, creds.authcid)
        if reply.code == "235":
            self.auth = creds.authcid

    def MAIL(self, reply: Reply, address: str, params: Any) -> None:  # noqa: N802 - a Server hook
        self.peer._apply("MAIL", reply, address)
        if reply.code == "250":
            self.sender = address
            self.recipients = []

    def RCPT(self, reply: Reply, address: str, params: Any) -> None:  # noqa: N802 - a Server hook
        self.peer._apply("RCPT", reply, address)
        if reply.code == "250":
            self.recipients.append(address)

    def DATA(self, reply: Reply) -> None:  # noqa: N802 - a Server hook
        self.peer._apply("DATA", reply, None)

    def HAVE_DATA(self, reply: Reply, data: bytes | None, err: Any) -> None:  # noqa: N802 - a Server hook
        if err is None and data is not None:
            self.peer._apply("HAVE_DATA", reply, None)
            if reply.code == "250":
                self.peer._accept(
                    PeerMessage(
                        self.sender or "",
                        list(self.recipients),
                        bytes(data),
                        self.ehlo_as,
                        self.connection.encrypted,
                        self.auth,
                    )
                )
        self.sender = None
        self.recipients = []

    def RSET(self, reply: Reply) -> None:  # noqa: N802 - a Server hook
        self.peer._apply("RSET", reply, None)
        self.sender = None
        self.recipients = []


class RecordingSmtpPeer:
    """A real SMTP server in the test process, reachable with :meth:`socket_creator`.

    Args:
        hostname: The peer's name (banner, certificate).
        tls: Offer STARTTLS with a throw-away certificate (needs trustme).
        context: Your own server :class:`ssl.SSLContext` instead.
        credentials: ``{user: password}`` accepted by AUTH; AUTH is offered
            only when given.
        timeout: The server's command timeout, and the default wait of
            :meth:`wait_for_messages`.

    Attributes:
        messages: Every :class:`PeerMessage` accepted, in order.
        connections: Every :class:`PeerConnection`, in order.
        refuse_connections: Set to True to make :meth:`socket_creator` fail
            as a refused connection would.
    """

    def __init__(
        self,
        hostname: str = "peer.example.test",
        *,
        tls: bool = False,
        context: ssl.SSLContext | None = None,
        credentials: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.hostname = hostname
        if tls and context is None:
            from slimta.testing import _tls  # trustme is only needed for TLS

            context = _tls.server_context(hostname)
        self.context = context
        self.credentials: dict[str, str] = dict(credentials or {})
        self.timeout = timeout
        self.messages: list[PeerMessage] = []
        self.connections: list[PeerConnection] = []
        self.refuse_connections = False
        self._rules: dict[str, list[_Rule]] = {}
        self._greenlets: list[gevent.Greenlet[..., Any]] = []
        self._changed = Event()
        self._closed = False

    # -- scripting -------------------------------------------------------------

    def set_reply(
        self, command: str, code: str, message: str, *, address: str | None = None, times: int | None = None
    ) -> None:
        """Answer ``command`` with ``code message`` instead of accepting it.

        Args:
            command: ``"MAIL"``, ``"RCPT"``, ``"DATA"``, ``"HAVE_DATA"`` (the
                reply after the message), ``"EHLO"``, ``"HELO"``,
                ``"STARTTLS"``, ``"AUTH"``, ``"RSET"`` or ``"BANNER"``.
            code: The reply code, e.g. ``"550"``.
            message: The reply text, e.g. ``"5.1.1 No such user"``.
            address: Only for this address (the sender for MAIL, the
                recipient for RCPT, the name for EHLO/HELO, the user for
                AUTH); None for every command of that kind.
            times: Use the rule this many times, then drop it; None for ever.

        Raises:
            HelperError: ``command`` cannot be scripted.
        """
        command = command.upper()
        if command not in SCRIPTABLE:
            raise HelperError(f"cannot script a reply to {command!r}; choose from {sorted(SCRIPTABLE)}")
        self._rules.setdefault(command, []).append(_Rule(code, message, address, times))

    def _apply(self, command: str, reply: Reply, address: str | None) -> None:
        for rule in self._rules.get(command, ()):
            if rule.address is not None and rule.address != address:
                continue
            reply.code = rule.code
            reply.message = rule.message
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    self._rules[command].remove(rule)
            return

    def _accept(self, message: PeerMessage) -> None:
        self.messages.append(message)
        self._changed.set()

    # -- connecting ------------------------------------------------------------

    def socket_creator(self, address: Any, *args: Any, **kwargs: Any) -> gevent.socket.socket:
        """Open a connection to the peer; pass this as a relay's ``socket_creator``.

        Accepts (and ignores) the extra arguments of
        :func:`gevent.socket.create_connection`.

        Returns:
            The client end of a new in-process socket pair; a server session
            runs on the other end in a greenlet.

        Raises:
            ConnectionRefusedError: :attr:`refuse_connections` is set, or
                the peer was closed.
        """
        if self._closed or self.refuse_connections:
            why = "the peer was closed" if self._closed else "refuse_connections is set"
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"RecordingSmtpPeer refused the connection: {why}"
            )
        server_sock, client_sock = gevent.socket.socketpair()
        connection = PeerConnection(address)
        self.connections.append(connection)
        self._greenlets.append(gevent.spawn(self._serve, server_sock, connection))
        return client_sock

    def _serve(self, sock: gevent.socket.socket, connection: PeerConnection) -> None:
        server = Server(
            sock,
            None,
            address=("192.0.2.25", 25),
            auth=bool(self.credentials),
            context=self.context,
            command_timeout=self.timeout,
            data_timeout=self.timeout,
        )
        server.hostname = self.hostname
        server.io = _RecordingIO(sock, server.address, connection)
        server.handlers = _PeerHandlers(self, connection, server)
        try:
            server.handle()
        except ConnectionLost:
            pass
        finally:
            server.io.close()
            connection.closed = True
            self._changed.set()

    # -- results ---------------------------------------------------------------

    @property
    def received(self) -> bytes:
        """Every byte received, all connections in order."""
        return b"".join(bytes(conn.received) for conn in self.connections)

    def wait_for_messages(self, count: int = 1, timeout: float | None = None) -> list[PeerMessage]:
        """Wait until at least ``count`` messages were accepted in all.

        Raises:
            HelperTimeout: Fewer came within ``timeout`` (default
                :attr:`timeout`) seconds.
        """
        timeout = self.timeout if timeout is None else timeout
        if not wait_until(lambda: len(self.messages) >= count, self._changed, timeout):
            raise HelperTimeout(
                f"waited {timeout} s for {count} message(s), the peer accepted {len(self.messages)} "
                f"over {len(self.connections)} connection(s)"
            )
        return self.messages

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until every connection made so far has ended.

        Raises:
            HelperTimeout: A session still runs after ``timeout`` seconds.
        """
        timeout = self.timeout if timeout is None else timeout
        done = gevent.joinall(self._greenlets, timeout=timeout)
        if len(done) < len(self._greenlets):
            raise HelperTimeout(
                f"{len(self._greenlets) - len(done)} peer session(s) still open after {timeout} s"
            )

    def close(self) -> None:
        """Stop every session; later connections are refused."""
        self._closed = True
        gevent.killall(self._greenlets, block=True, timeout=self.timeout)

    def __enter__(self) -> RecordingSmtpPeer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
