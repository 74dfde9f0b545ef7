"""SMTP and LMTP clients on a connected gevent socket, with PIPELINING.

Each command method returns a :class:`~slimta.smtp.reply.Reply`.  When the
server offers PIPELINING, :meth:`Client.mailfrom`, :meth:`Client.rcptto` and
:meth:`Client.send_data` only queue their command: the returned reply is
filled in when a later call needs an answer (``data()``, ``rset()``,
``quit()``...), which sends the whole group in one write.  Without
PIPELINING every call waits for its own reply.

The client never blocks without bound only if the caller says so: wrap calls
in :class:`gevent.Timeout` (the SMTP relay does, for every read, the reply to
the final dot included), or set :attr:`Client.timeout`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

from gevent import Timeout
from gevent.monkey import get_original

from slimta.smtp import ConnectionLost, SmtpError
from slimta.smtp._clientcore import ClientConnection, message_lines
from slimta.smtp.auth import AuthError, choose_client_mechanism, client_mechanism
from slimta.smtp.extensions import Extensions
from slimta.smtp.io import IO
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Client", "LmtpClient", "TlsHandshakeFailed"]

_log = logging.getLogger(__name__)

# The real poll(), even under monkey-patching: polled with a zero timeout it
# answers at once and never yields, so checking a pooled connection costs
# one system call and no wait.
_poll = get_original("select", "poll")
_POLL_READY = 0x001 | 0x008 | 0x010  # POLLIN | POLLERR | POLLHUP


class TlsHandshakeFailed(SmtpError):
    """The server accepted STARTTLS but the TLS handshake failed.

    The connection is unusable afterwards; a caller wanting opportunistic
    TLS reconnects and delivers in cleartext.
    """


def opportunistic_context() -> ssl.SSLContext:
    """A client context that encrypts without verifying (RFC 7435 "may").

    Used when no context is given: the default of python-slimta 4.0 is to
    encrypt whenever the server offers STARTTLS, certificate or not.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Client:
    """Perform SMTP commands over a connected socket.

    Args:
        socket: the connected (gevent) socket.
        address: the server's address, recorded in replies for errors.

    Attributes:
        extensions: the server's :class:`~slimta.smtp.extensions.Extensions`,
            filled in by :meth:`ehlo`.
        last_error: the last 4xx/5xx reply received, or None.
        timeout: optional seconds bounding each wait for replies.
        allow_cleartext_auth: let :meth:`auth` use PLAIN or LOGIN on an
            unencrypted connection (off by default).
    """

    def __init__(self, socket: Any, address: Any = None) -> None:
        self.io = IO(socket, address)
        self.address = address
        self.core = ClientConnection()
        self.extensions = Extensions()
        self.last_error: Reply | None = None
        self.timeout: float | None = None
        self.allow_cleartext_auth = False

    # -- plumbing ------------------------------------------------------------------

    def _new_reply(self, command: str) -> Reply:
        return Reply(command=command, address=self.address)

    @contextlib.contextmanager
    def _bounded(self) -> Iterator[None]:
        if self.timeout is None:
            yield
            return
        with Timeout(self.timeout):
            yield

    def _flush_pipeline(self) -> None:
        """Send what is queued, then read until every awaited reply is in."""
        self.io.send(self.core.data_to_send())
        with self._bounded():
            while self.core.pending:
                reply = self.core.next_reply()
                if reply is None:
                    if self.core.eof:
                        raise ConnectionLost("Server closed the connection")
                    self.core.receive_data(self.io.recv())
                    continue
                if reply.is_error():
                    self.last_error = reply

    def _maybe_flush(self) -> None:
        if "PIPELINING" not in self.extensions:
            self._flush_pipeline()

    def _command(self, verb: str, arg: str | None = None, *, wait: bool = True) -> Reply:
        reply = self._new_reply(verb)
        self.core.command(verb, arg, reply)
        if wait:
            self._flush_pipeline()
        return reply

    def has_reply_waiting(self) -> bool:
        """True if the server has sent something not read yet (or closed).

        Never waits: a pooled connection is checked before reuse with this.
        """
        if self.core.has_buffered_data:
            return True
        sock = self.io.socket
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():
            return True
        try:
            fileno = sock.fileno()
        except OSError:
            return False
        if fileno < 0:
            return False
        poller = _poll()
        poller.register(fileno, _POLL_READY)
        return bool(poller.poll(0))

    def get_reply(self, command: str = "[TIMEOUT]") -> Reply:
        """Read one reply we did not ask for (e.g. a 421 before closing)."""
        reply = self._new_reply(command)
        self.core.expect(reply)
        self._flush_pipeline()
        return reply

    def get_banner(self) -> Reply:
        """Wait for the server's greeting."""
        banner = self._new_reply("[BANNER]")
        banner.enhanced_status_code = False
        self.core.expect(banner)
        self._flush_pipeline()
        return banner

    def custom_command(self, command: str, arg: str | None = None) -> Reply:
        """Send any command and wait for its reply."""
        return self._command(command.upper(), arg)

    # -- session commands ---------------------------------------------------------

    def ehlo(self, ehlo_as: str) -> Reply:
        """Send EHLO; on 250, :attr:`extensions` holds what the server offers."""
        reply = self._new_reply("EHLO")
        reply.enhanced_status_code = False
        self.core.command("EHLO", ehlo_as, reply)
        self._flush_pipeline()
        self.extensions.reset()
        if reply.code == "250":
            reply.message = self.extensions.parse_string(reply.message or "")
        return reply

    def lhlo(self, lhlo_as: str) -> Reply:
        """Send LHLO (RFC 2033, the LMTP greeting); fills :attr:`extensions` on 250."""
        reply = self._new_reply("LHLO")
        reply.enhanced_status_code = False
        self.core.command("LHLO", lhlo_as, reply)
        self._flush_pipeline()
        self.extensions.reset()
        if reply.code == "250":
            reply.message = self.extensions.parse_string(reply.message or "")
        return reply

    def helo(self, helo_as: str) -> Reply:
        """Send HELO (no extensions)."""
        reply = self._new_reply("HELO")
        reply.enhanced_status_code = False
        self.core.command("HELO", helo_as, reply)
        self._flush_pipeline()
        self.extensions.reset()
        return reply

    def encrypt(self, context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        """Run a TLS handshake now (implicit TLS, or after STARTTLS).

        Raises:
            TlsHandshakeFailed: the handshake failed; the connection is dead.
        """
        context = context or opportunistic_context()
        with self._bounded():
            ok = self.io.encrypt_socket_client(context, server_hostname)
        if not ok:
            raise TlsHandshakeFailed("TLS handshake failed")

    def starttls(self, context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> Reply:
        """Send STARTTLS and, on 220, encrypt; then call :meth:`ehlo` again.

        Anything the server sent after its 220 and before the handshake is
        discarded (it cannot be trusted: response injection).

        Raises:
            TlsHandshakeFailed: the server said 220 but the handshake failed.
        """
        reply = self._command("STARTTLS")
        if reply.code == "220":
            dropped = self.core.discard_received()
            if dropped:
                _log.warning("discarded %d octets received before TLS from %s", dropped, self.address)
            self.extensions.reset()
            self.encrypt(context, server_hostname)
        return reply

    def auth(
        self, authcid: str, secret: str, authzid: str | None = None, mechanism: str | None = None
    ) -> Reply:
        """Authenticate with the best SASL mechanism both sides support.

        Credentials are never sent in cleartext by PLAIN or LOGIN: over an
        unencrypted connection only CRAM-MD5 can be chosen (unless
        :attr:`allow_cleartext_auth` is set).

        Returns:
            The final reply (235 on success).  When no usable mechanism
            exists, a local ``504 5.7.4`` reply is returned and nothing sent.
        """
        offered = self.extensions.getparam("AUTH") or ""
        allowed = [mechanism] if mechanism else None
        try:
            encrypted = self.io.encrypted or self.allow_cleartext_auth
            name = choose_client_mechanism(str(offered), allowed, encrypted=encrypted)
        except AuthError:
            name = None
        if name is None:
            reply = Reply("504", "5.7.4 No usable authentication mechanism", command="AUTH")
            self.last_error = reply
            return reply
        mech = client_mechanism(name, authcid, secret, authzid)
        self.io.auth_exchange(True)
        try:
            initial = mech.initial_response()
            reply = self._command("AUTH", f"{name} {initial or '='}" if initial is not None else name)
            while reply.code == "334":
                try:
                    answer = mech.respond(reply.raw_message or "")
                except AuthError:
                    answer = "*"
                reply = self._command_raw(answer)
        finally:
            self.io.auth_exchange(False)
        return reply

    def _command_raw(self, line: str) -> Reply:
        reply = self._new_reply("AUTH")
        self.core.command(line, None, reply)
        self._flush_pipeline()
        return reply

    def mailfrom(
        self,
        address: str,
        data_size: int | None = None,
        auth: str | bool | None = None,
        params: dict[str, str | bool] | None = None,
    ) -> Reply:
        """Send ``MAIL FROM:<address>`` (queued when PIPELINING is offered).

        Args:
            address: the reverse-path; ``''`` for the null sender.
            data_size: the message size, sent as ``SIZE=`` if offered.
            auth: the RFC 4954 ``AUTH=`` value (``'<>'`` if True), if AUTH is
                offered.
            params: more ESMTP parameters (``BODY``, ``SMTPUTF8``, ``RET``...).
        """
        arg = f"FROM:<{address}>"
        if data_size is not None and "SIZE" in self.extensions:
            arg += f" SIZE={int(data_size)}"
        if auth and "AUTH" in self.extensions:
            arg += " AUTH=<>" if auth is True else f" AUTH={auth}"
        arg += _format_params(params)
        reply = self._command("MAIL", arg, wait=False)
        self._maybe_flush()
        return reply

    def rcptto(self, address: str, params: dict[str, str | bool] | None = None) -> Reply:
        """Send ``RCPT TO:<address>`` (queued when PIPELINING is offered)."""
        reply = self._command("RCPT", f"TO:<{address}>" + _format_params(params), wait=False)
        self._maybe_flush()
        return reply

    def data(self) -> Reply:
        """Send DATA and wait for every pending reply (354 expected)."""
        return self._command("DATA")

    def send_data(self, *data: bytes) -> Reply:
        """Send the message (dot-stuffed, CRLF-normalised) and the final dot."""
        reply = self._new_reply("[SEND_DATA]")
        self.core.message(data, [reply])
        # The end of the data is a synchronisation point (RFC 2920): the
        # reply is read now, pipelining or not.
        self._flush_pipeline()
        return reply

    def send_empty_data(self) -> Reply:
        """Send an empty message (just the final dot)."""
        return self.send_data()

    def send_bdat(self, *parts: bytes) -> Reply:
        """Send the message with one ``BDAT n LAST`` (RFC 3030 CHUNKING).

        .. versionadded:: 0.1.0
        """
        reply = self._new_reply("BDAT")
        self.core.bdat(message_lines(*parts), True, reply)
        self._flush_pipeline()
        return reply

    def rset(self) -> Reply:
        """Send RSET."""
        return self._command("RSET")

    def quit(self) -> Reply:
        """Send QUIT and wait for 221."""
        return self._command("QUIT")


class LmtpClient(Client):
    """An LMTP (RFC 2033) client.

    It greets with LHLO instead of EHLO, and gets one reply per accepted
    recipient after the message data.
    """

    def __init__(self, socket: Any, address: Any = None) -> None:
        super().__init__(socket, address)
        self.rcpttos: list[tuple[str, Reply]] = []

    def ehlo(self, ehlo_as: str) -> Reply:
        """Not part of LMTP; use :meth:`lhlo`."""
        raise NotImplementedError("LMTP uses LHLO")

    def helo(self, helo_as: str) -> Reply:
        """Not part of LMTP; use :meth:`lhlo`."""
        raise NotImplementedError("LMTP uses LHLO")

    def lhlo(self, lhlo_as: str) -> Reply:
        """Send LHLO and forget earlier recipients."""
        self.rcpttos = []
        return super().lhlo(lhlo_as)

    def rcptto(self, address: str, params: dict[str, str | bool] | None = None) -> Reply:
        """Send RCPT and remember it: each accepted one gets a data reply."""
        reply = super().rcptto(address, params)
        self.rcpttos.append((address, reply))
        return reply

    def send_data(self, *data: bytes) -> list[tuple[str, Reply]]:  # type: ignore[override]
        """Send the message; returns ``[(recipient, reply)]`` per accepted recipient."""
        # Every RCPT reply must be known to tell how many data replies follow.
        self._flush_pipeline()
        results = [
            (address, self._new_reply("[SEND_DATA]"))
            for address, rcpt_reply in self.rcpttos
            if (rcpt_reply.code or "").startswith("2")
        ]
        self.rcpttos = []
        self.core.message(data, [reply for _, reply in results])
        self._flush_pipeline()
        return results

    def send_empty_data(self) -> list[tuple[str, Reply]]:  # type: ignore[override]
        """Send an empty message; returns per-recipient replies."""
        return self.send_data()

    def rset(self) -> Reply:
        """Send RSET and forget the recipients."""
        self.rcpttos = []
        return super().rset()


def _format_params(params: dict[str, str | bool] | None) -> str:
    if not params:
        return ""
    out = []
    for key, value in params.items():
        if value is True:
            out.append(f" {key}")
        elif value:
            out.append(f" {key}={value}")
    return "".join(out)
