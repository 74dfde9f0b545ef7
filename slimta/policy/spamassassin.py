"""Ask a SpamAssassin ``spamd`` server whether a message is spam.

:class:`SpamAssassin` speaks the spamc/spamd protocol over TCP.  It sends::

    SYMBOLS SPAMC/1.5
    Content-length: <size of the message in bytes>
    User: slimta

    <the message>

and expects an answer such as::

    SPAMD/1.1 0 EX_OK
    Content-length: 27
    Spam: True ; 15.2 / 5.0

    BAYES_99,HTML_MESSAGE,URIBL

whose ``Spam`` line gives the verdict and whose body lists the names of the
rules that matched.  Used as a queue policy it records the verdict in an
``X-Spam-Status`` field (``YES`` or ``NO``) and, for spam, the rule names
in ``X-Spam-Symbols``.  Fields of those names already in the message are
removed first, so a sender cannot pre-set a verdict.

Everything runs on gevent sockets under one deadline (``timeout``) that
covers connecting, sending and reading, so a hung ``spamd`` cannot hold a
greenlet forever.  Any failure -- refused connection, timeout, an answer that
is not the protocol, a spamd error code -- raises :class:`SpamAssassinError`
naming the problem.  It says nothing about the message itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import Message
from email.policy import compat32
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket

from slimta.envelope import Envelope
from slimta.logging import getSocketLogger
from slimta.policy import PolicyError, QueuePolicy

if TYPE_CHECKING:
    from gevent.socket import socket as GeventSocket  # noqa: N812

__all__ = ["SpamAssassin", "SpamAssassinError"]

log = getSocketLogger(__name__)

_STATUS_LINE = re.compile(rb"SPAMD/(\d+)\.(\d+) +(\d+) *(.*)\Z")
_SPAM_HEADER = re.compile(
    rb"(True|False|Yes|No) *; *(-?[0-9]+(?:\.[0-9]+)?) */ *(-?[0-9]+(?:\.[0-9]+)?)\Z", re.IGNORECASE
)
_SYMBOL = re.compile(rb"[A-Za-z0-9_][\x21-\x2b\x2d-\x7e]*")
_CONTENT_LENGTH = re.compile(rb"^content-length: *(\d+) *$", re.IGNORECASE | re.MULTILINE)
# An answer larger than this is not spamd talking; stop reading.
_MAX_RESPONSE = 1 << 20


class SpamAssassinError(PolicyError):
    """Talking to ``spamd`` failed; the message was not scanned.

    The text says what went wrong (connection refused, timeout, malformed
    answer, spamd error code).  It is not a verdict on the message.

    Args:
        msg: What went wrong.
    """

    def __init__(self, msg: str = "Error scanning message") -> None:
        super().__init__(msg)


class SpamAssassin(QueuePolicy):
    """A queue policy that has ``spamd`` check each message.

    Args:
        address: ``(host, port)`` of spamd; default ``('127.0.0.1', 783)``.
        timeout: Seconds allowed for a whole scan (connect, send, answer);
            ``None`` for no limit.
        socket_creator: A function called with ``address`` that returns a
            connected gevent socket, instead of
            :func:`gevent.socket.create_connection` (e.g.
            :func:`slimta.util.create_connection_ipv4`).
    """

    #: The ``User`` the scan runs as (spamd uses it for per-user settings).
    SPAMC_USER = b"slimta"

    #: The spamc protocol version announced in requests.
    SPAMC_PROTOCOL_VER = b"1.5"

    def __init__(
        self,
        address: tuple[str, int] | None = None,
        timeout: float | None = None,
        socket_creator: Callable[[Any], GeventSocket] | None = None,
    ) -> None:
        self.address = address or ("127.0.0.1", 783)
        self.timeout = timeout
        self.custom_socket_creator = socket_creator

    def _socket_creator(self, address: Any) -> GeventSocket:
        if self.custom_socket_creator is not None:
            return self.custom_socket_creator(address)
        sock = gsocket.create_connection(address)
        log.connect(sock, address)
        return sock

    def _build_request_str(self, header_data: bytes, message_data: bytes) -> bytes:
        """Return the whole request: the request header block and the message."""
        size = str(len(header_data) + len(message_data)).encode("ascii")
        head = b"".join(
            (
                b"SYMBOLS SPAMC/" + self.SPAMC_PROTOCOL_VER + b"\r\n",
                b"Content-length: " + size + b"\r\n",
                b"User: " + self.SPAMC_USER + b"\r\n\r\n",
            )
        )
        return head + header_data + message_data

    def _send_request(self, sock: GeventSocket, header_data: bytes, message_data: bytes) -> None:
        request = self._build_request_str(header_data, message_data)
        sock.sendall(request)
        log.send(sock, request)
        # spamd reads to end of input when it has no usable Content-length;
        # closing our side also makes older spamd versions answer at once.
        sock.shutdown(gsocket.SHUT_WR)
        log.shutdown(sock, gsocket.SHUT_WR)

    @staticmethod
    def _recv_response(sock: GeventSocket) -> bytes:
        """Read the answer until spamd closes the connection or it is complete."""
        chunks: list[bytes] = []
        total = 0
        expected: int | None = None
        while True:
            data = sock.recv(65536)
            log.recv(sock, data)
            if not data:
                break
            chunks.append(data)
            total += len(data)
            if total > _MAX_RESPONSE:
                raise SpamAssassinError(f"spamd answer exceeds {_MAX_RESPONSE} bytes")
            if expected is None:
                buffered = b"".join(chunks)
                end = buffered.find(b"\r\n\r\n")
                if end >= 0:
                    match = _CONTENT_LENGTH.search(buffered[:end])
                    expected = end + 4 + int(match.group(1)) if match else -1
            if expected is not None and expected >= 0 and total >= expected:
                break
        return b"".join(chunks)

    @staticmethod
    def _parse_response(response: bytes) -> tuple[bool, list[str]]:
        """Turn spamd's answer into ``(spammy, symbols)``."""
        if not response:
            raise SpamAssassinError("spamd closed the connection without answering")
        head, sep, body = response.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = _STATUS_LINE.match(lines[0].strip())
        if not status:
            raise SpamAssassinError(f"malformed spamd status line: {lines[0][:80]!r}")
        code, text = int(status.group(3)), status.group(4).decode("ascii", "replace")
        if code != 0:
            raise SpamAssassinError(f"spamd answered error {code} {text}".rstrip())
        if not sep:
            raise SpamAssassinError("spamd answer has no end of headers")
        spammy: bool | None = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if colon and name.strip().lower() == b"spam":
                verdict = _SPAM_HEADER.match(value.strip())
                if not verdict:
                    raise SpamAssassinError(f"malformed spamd Spam header: {value.strip()[:80]!r}")
                spammy = verdict.group(1).lower() in (b"true", b"yes")
        if spammy is None:
            raise SpamAssassinError("spamd answer has no Spam header")
        symbols = [sym.decode("ascii") for sym in _SYMBOL.findall(body)]
        return spammy, symbols

    def _exchange(self, header_data: bytes, message_data: bytes) -> tuple[bool, list[str]]:
        sock = None
        try:
            sock = self._socket_creator(self.address)
            self._send_request(sock, header_data, message_data)
            response = self._recv_response(sock)
        except OSError as exc:
            raise SpamAssassinError(f"spamd at {self.address!r}: {exc}") from exc
        finally:
            if sock is not None:
                log.close(sock)
                sock.close()
        return self._parse_response(response)

    def scan(self, message: Envelope | bytes | str) -> tuple[bool, list[str]]:
        """Have spamd scan a message; no header is changed.

        Args:
            message: An :class:`~slimta.envelope.Envelope`, or the raw
                message as bytes (or ``str``, encoded as UTF-8).

        Returns:
            ``(spammy, symbols)``: whether spamd judged the message spam,
            and the names of the rules that matched (as ``str``).

        Raises:
            SpamAssassinError: spamd could not be reached, did not answer
                within ``timeout``, or answered something unusable.
        """
        if isinstance(message, Envelope):
            header_data, message_data = message.flatten()
        else:
            header_data = b""
            message_data = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        try:
            with gevent.Timeout(self.timeout):
                return self._exchange(header_data, message_data)
        except gevent.Timeout as exc:
            raise SpamAssassinError(
                f"spamd at {self.address!r} did not answer within {self.timeout} seconds"
            ) from exc

    def apply(self, envelope: Envelope) -> None:
        """Scan the envelope and record the verdict in its headers.

        ``X-Spam-Status`` becomes ``YES`` or ``NO``; for spam,
        ``X-Spam-Symbols`` lists the matched rules, comma-separated.

        Args:
            envelope: The envelope to scan and change.

        Raises:
            SpamAssassinError: As for :meth:`scan`.
        """
        spammy, symbols = self.scan(envelope)
        headers = envelope.headers
        if headers is None:
            headers = envelope.headers = Message(policy=compat32)
        del headers["X-Spam-Status"]
        del headers["X-Spam-Symbols"]
        if spammy:
            headers["X-Spam-Status"] = "YES"
            headers["X-Spam-Symbols"] = ",".join(symbols)
        else:
            headers["X-Spam-Status"] = "NO"
