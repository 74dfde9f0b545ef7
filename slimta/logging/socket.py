"""Log lines for socket operations, with SMTP AUTH secrets redacted.

Lines look like ``fd:<fileno>:<operation> ...``.  Everything is logged at
``DEBUG`` except :meth:`SocketLogger.error`, which logs at
:data:`socket_error_log_level`.

Redaction of AUTH exchanges
---------------------------
:meth:`SocketLogger.send` and :meth:`SocketLogger.recv` pass the bytes through
a small per-socket state machine before they are logged, so the same rules
protect a server (which receives the credentials) and a client (which sends
them):

* In a line that starts with ``AUTH `` (any case), everything after the
  mechanism name -- the SASL initial response -- is replaced by
  ``[redacted]``: ``AUTH PLAIN [redacted]\\r\\n``.
* From that line on the socket is *in an AUTH exchange*: in both directions,
  every line that is not an SMTP reply line (``NNN text``/``NNN-text``) is
  replaced by ``[redacted]``, so the base64 continuation lines of
  ``AUTH LOGIN`` or ``CRAM-MD5`` never appear.  The server's ``334``
  challenges stay visible.
* The exchange ends with the first final reply line whose code is not
  ``334`` (``235``, ``535``, ``501`` ...).

The state follows lines across ``recv`` chunks, so a client that types
``AUTH PLAIN ...`` one byte per packet is redacted just the same.  State is
shared by every :class:`SocketLogger` and keyed by file descriptor; it is
dropped by :meth:`~SocketLogger.close` and reset by
:meth:`~SocketLogger.accept` and :meth:`~SocketLogger.connect`.

How an SMTP server or client should use it:

1. Log every chunk it reads with ``recv(sock, data)`` and every chunk it
   writes with ``send(sock, data)``, raw, as soon as it has it.
2. Call :meth:`~SocketLogger.auth_begin` when it starts an AUTH exchange and
   :meth:`~SocketLogger.auth_end` when the exchange is over.  This is belt
   and braces: the automatic rules above already cover a well-formed
   exchange, but the explicit call also holds if ``DEBUG`` logging is
   switched on in the middle of one (the automatic tracking only runs while
   lines are being logged, to keep the hot path free).
3. Call :meth:`~SocketLogger.close` when the connection ends.
4. Never pass decoded credentials to any other log call.
"""

from __future__ import annotations

import logging
import re
import socket as _stdlib_socket
from typing import TYPE_CHECKING, Any, Protocol

from slimta.logging._format import format_line

if TYPE_CHECKING:
    import ssl

__all__ = ["SocketLogger", "socket_error_log_level"]

#: The level at which :meth:`SocketLogger.error` logs.  Socket errors are
#: usually not fatal (a peer went away), so a deployment whose alerting keys
#: on ``ERROR`` may lower this to ``logging.WARNING`` or ``logging.INFO``.  It
#: is read on every call, so assigning a new value takes effect at once.
socket_error_log_level = logging.ERROR


class _Socket(Protocol):
    def fileno(self) -> int: ...


class _ConnectedSocket(_Socket, Protocol):
    def getpeername(self) -> Any: ...


REDACTED = b"[redacted]"

# Line states for the redaction machine.
_UNDECIDED = 0  # fewer than _HEAD_LEN bytes of the line seen so far
_PLAIN = 1  # log the rest of the line as it is
_MECH = 2  # inside the mechanism name of an AUTH command
_SECRET = 3  # redact the rest of the line

_HEAD_LEN = 5  # len(b"AUTH "); also enough to recognise "NNN " replies
_SEND, _RECV = 0, 1


class _LineState:
    __slots__ = ("head", "mode")

    def __init__(self) -> None:
        self.head = b""
        self.mode = _UNDECIDED


class _AuthState:
    """What the redaction machine knows about one socket."""

    __slots__ = ("active", "lines")

    def __init__(self) -> None:
        self.active = False
        self.lines = (_LineState(), _LineState())

    def idle(self) -> bool:
        """True when nothing needs remembering for the next chunk."""
        return not self.active and all(ln.mode == _UNDECIDED and not ln.head for ln in self.lines)


# Shared by all SocketLogger instances: the SMTP server and its I/O layer may
# well hold different loggers for the same socket.
_states: dict[int, _AuthState] = {}


def _is_reply_head(head: bytes) -> bool:
    """Tell whether the start of a line is an SMTP reply line ("250 ", "334-", "250")."""
    return head[:3].isdigit() and (len(head) == 3 or head[3:4] in b" -\r")


def _decide(state: _AuthState, line: _LineState) -> None:
    """Choose how to log a line once its head is known."""
    head = line.head
    if state.active:
        if _is_reply_head(head):
            line.mode = _PLAIN
            if head[3:4] != b"-" and head[:3] != b"334":
                state.active = False  # the final reply ends the exchange
        else:
            line.mode = _SECRET
    elif head.upper() == b"AUTH ":
        state.active = True
        line.mode = _MECH
    else:
        line.mode = _PLAIN


def _filter_segment(state: _AuthState, line: _LineState, seg: bytes, ended: bool, out: list[bytes]) -> None:
    """Append the loggable form of one piece of a line (without its LF) to ``out``."""
    pos = 0
    if line.mode == _UNDECIDED:
        take = seg[: _HEAD_LEN - len(line.head)]
        line.head += take
        if len(line.head) < _HEAD_LEN and not ended:
            # Too little seen to tell; inside an exchange it may be a secret.
            out.append(REDACTED if state.active and take else take)
            return
        _decide(state, line)
        # A secret line is redacted from its first byte, head included.
        pos = 0 if line.mode == _SECRET else len(take)
        out.append(seg[:pos])
    if line.mode == _MECH:
        space = seg.find(b" ", pos)
        if space == -1:
            out.append(seg[pos:])
            return
        out.append(seg[pos : space + 1])
        pos = space + 1
        line.mode = _SECRET
    rest = seg[pos:]
    if line.mode == _SECRET:
        body = rest.rstrip(b"\r")
        # Keep the CR so the logged line still shows where it ended.
        out.append((REDACTED if body else b"") + rest[len(body) :])
    else:
        out.append(rest)


# An AUTH command starting at the beginning of the chunk or of any line in it.
_AUTH_START_RE = re.compile(rb"(?:\A|\n)auth ", re.IGNORECASE)


def _redact(key: int, direction: int, data: bytes) -> bytes:
    """Return ``data`` with AUTH secrets replaced, updating the socket's state."""
    state = _states.get(key)
    if state is None:
        # No state means the previous chunk ended at a line end and no
        # exchange is running.  Without an AUTH line start in this chunk the
        # data is logged as is; only an unterminated last line is remembered
        # (the next chunk may complete an "AUTH " begun here).
        if _AUTH_START_RE.search(data) is None:
            tail = data[data.rfind(b"\n") + 1 :]
            if tail:
                line = _states.setdefault(key, _AuthState()).lines[direction]
                line.head = tail[:_HEAD_LEN]
                line.mode = _PLAIN if len(tail) >= _HEAD_LEN else _UNDECIDED
            return data
        state = _states[key] = _AuthState()
    line = state.lines[direction]
    out: list[bytes] = []
    segments = data.split(b"\n")
    last = len(segments) - 1
    for index, seg in enumerate(segments):
        _filter_segment(state, line, seg, index < last, out)
        if index < last:
            out.append(b"\n")
            line.head, line.mode = b"", _UNDECIDED
    if state.idle():
        del _states[key]
    return b"".join(out)


class SocketLogger:
    """Log socket events as ``fd:<fileno>:<operation>`` lines.

    Obtain one with :func:`slimta.logging.getSocketLogger`.

    Args:
        logger: The :class:`logging.Logger` to write to.
    """

    #: ``send``/``recv`` payloads longer than this many bytes are cut short
    #: in the log, which then also carries ``truncated=<full length>``.
    #:
    #: .. versionadded:: 0.1.0
    data_limit = 1024

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def _log(self, fileno: object, operation: str, **data: Any) -> None:
        # Callers check isEnabledFor(DEBUG) first; this only formats.
        self.logger.debug(format_line("fd", fileno, operation, data))

    def _data(self, socket: _Socket, direction: int, operation: str, data: Any) -> None:
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        fileno = socket.fileno()
        is_text = isinstance(data, str)
        raw = data.encode("utf-8", "surrogateescape") if is_text else bytes(data)
        raw = _redact(fileno, direction, raw)
        extra: dict[str, Any] = {}
        if len(raw) > self.data_limit:
            extra["truncated"] = len(raw)
            raw = raw[: self.data_limit]
        shown: str | bytes = raw.decode("utf-8", "surrogateescape") if is_text else raw
        self._log(fileno, operation, data=shown, **extra)

    def send(self, socket: _Socket, data: bytes) -> None:
        """Log data written to a socket (AUTH secrets redacted).

        Args:
            socket: The socket written to.
            data: The bytes written.
        """
        self._data(socket, _SEND, "send", data)

    def recv(self, socket: _Socket, data: bytes) -> None:
        """Log data read from a socket (AUTH secrets redacted).

        Args:
            socket: The socket read from.
            data: The bytes read.
        """
        self._data(socket, _RECV, "recv", data)

    def auth_begin(self, socket: _Socket) -> None:
        """Mark ``socket`` as being in an AUTH exchange, whatever is logged.

        Until :meth:`auth_end` (or a final non-334 reply is logged), every
        line sent or received that is not an SMTP reply is logged as
        ``[redacted]``.  Unlike the automatic detection, this works even
        while ``DEBUG`` is disabled, so credentials stay out of the log if it
        is enabled mid-exchange.

        .. versionadded:: 0.1.0

        Args:
            socket: The socket carrying the exchange.
        """
        _states.setdefault(socket.fileno(), _AuthState()).active = True

    def auth_end(self, socket: _Socket) -> None:
        """End the AUTH exchange started on ``socket``.

        .. versionadded:: 0.1.0

        Args:
            socket: The socket carrying the exchange.
        """
        state = _states.get(socket.fileno())
        if state is not None:
            state.active = False
            if state.idle():
                del _states[socket.fileno()]

    def accept(self, server: _Socket, client: _ConnectedSocket, address: object = None) -> None:
        """Log a connection accepted by a listening socket.

        Args:
            server: The listening socket.
            client: The new connection.
            address: The peer address, if already known.
        """
        _states.pop(client.fileno(), None)  # a reused descriptor starts afresh
        if self.logger.isEnabledFor(logging.DEBUG):
            peer = address or _peer_of(client)
            self._log(server.fileno(), "accept", clientfd=client.fileno(), peer=peer)

    def connect(self, socket: _ConnectedSocket, address: object = None) -> None:
        """Log an outgoing connection.

        Args:
            socket: The connected socket.
            address: The address connected to, if already known.
        """
        _states.pop(socket.fileno(), None)
        if self.logger.isEnabledFor(logging.DEBUG):
            self._log(socket.fileno(), "connect", peer=address or _peer_of(socket))

    def encrypt(self, socket: _Socket, context: ssl.SSLContext) -> None:
        """Log a completed TLS handshake.

        The line carries the context's session statistics and, when
        ``socket`` is an SSL socket, the protocol version and cipher name.

        Args:
            socket: The socket now encrypted.
            context: The :class:`ssl.SSLContext` used.
        """
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        data: dict[str, Any] = dict(context.session_stats())
        version = getattr(socket, "version", None)
        cipher = getattr(socket, "cipher", None)
        if callable(version) and callable(cipher):
            data["version"] = version()
            described = cipher()
            data["cipher"] = described[0] if described else None
        self._log(socket.fileno(), "encrypt", **data)

    def shutdown(self, socket: _Socket, how: int) -> None:
        """Log a ``shutdown()`` of one or both directions.

        Args:
            socket: The socket shut down.
            how: ``SHUT_RD``, ``SHUT_WR`` or ``SHUT_RDWR``.
        """
        if self.logger.isEnabledFor(logging.DEBUG):
            names = {_stdlib_socket.SHUT_RD: "read", _stdlib_socket.SHUT_WR: "write"}
            self._log(socket.fileno(), "shutdown", how=names.get(how, "both"))

    def close(self, socket: _Socket) -> None:
        """Log a socket being closed, and forget its redaction state.

        Args:
            socket: The socket about to be closed.
        """
        fileno = socket.fileno()
        _states.pop(fileno, None)
        if self.logger.isEnabledFor(logging.DEBUG):
            self._log(fileno, "close")

    def error(self, socket: _Socket | None, exc: BaseException, address: object = None) -> None:
        """Log a socket error (no traceback) at :data:`socket_error_log_level`.

        Args:
            socket: The socket that failed, or ``None``.
            exc: The exception raised.
            address: The peer address, if known.
        """
        # Read the module variable now, not at import: users change it late.
        level = socket_error_log_level
        if not self.logger.isEnabledFor(level):
            return
        data: dict[str, Any] = {"message": str(exc), "args": exc.args}
        if address:
            data["address"] = address
        fileno: object = socket.fileno() if socket is not None else "none"
        self.logger.log(level, format_line("fd", fileno, "error", data))

    def proxyproto_success(self, socket: _Socket, src_addr: object) -> None:
        """Log a valid PROXY protocol header and the source address it gave.

        Args:
            socket: The socket that received the header.
            src_addr: The original client address from the header.
        """
        if self.logger.isEnabledFor(logging.DEBUG):
            self._log(socket.fileno(), "ppsuccess", peer=src_addr)

    def proxyproto_invalid(self, socket: _Socket, exc: BaseException) -> None:
        """Log an invalid PROXY protocol header, at ``WARNING``.

        Args:
            socket: The socket that received the header.
            exc: The error describing what was wrong.
        """
        if self.logger.isEnabledFor(logging.WARNING):
            self.logger.warning(format_line("fd", socket.fileno(), "ppinvalid", {"message": str(exc)}))

    def proxyproto_local(self, sock: _Socket) -> None:
        """Log a PROXY header for a ``LOCAL`` connection (the proxy's own health check).

        Args:
            sock: The socket that received the header.
        """
        if self.logger.isEnabledFor(logging.DEBUG):
            self._log(sock.fileno(), "pplocal")


def _peer_of(sock: _ConnectedSocket) -> object:
    try:
        return sock.getpeername()
    except OSError:
        # The peer may already be gone; that is no reason to fail the log.
        return None
