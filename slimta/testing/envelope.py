"""An envelope factory for tests: :func:`make_envelope`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import email.utils
import itertools
from collections.abc import Iterable, Mapping

from slimta.envelope import Envelope

__all__ = ["make_envelope"]

_counter = itertools.count(1)


def make_envelope(
    sender: str = "sender@example.com",
    recipients: Iterable[str] = ("rcpt@example.com",),
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: bytes | str = b"Hello.\r\n",
    *,
    client_ip: str | None = "192.0.2.1",
    client_name: str | None = "client.example.test",
    receiver: str | None = "mx.example.test",
    timestamp: float | None = None,
) -> Envelope:
    r"""Build a parsed :class:`~slimta.envelope.Envelope` ready for a test.

    Args:
        sender: The envelope sender; ``""`` for the null sender.
        recipients: The envelope recipients.
        headers: The header fields, as a mapping or as ``(name, value)``
            pairs (to repeat a name).  ``None`` gives ``From``, ``To``,
            ``Subject``, ``Date`` and a unique ``Message-Id``; anything
            else is used exactly, with no defaults added.
        body: The body; a ``str`` is encoded as UTF-8.  Line endings are
            kept as given.
        client_ip: ``envelope.client["ip"]``.
        client_name: ``envelope.client["name"]`` (the EHLO name).
        receiver: ``envelope.receiver``.
        timestamp: ``envelope.timestamp`` (when it was received); None lets
            the queue set it when the envelope is enqueued.

    Returns:
        The envelope, with :attr:`~slimta.envelope.Envelope.headers` and
        :attr:`~slimta.envelope.Envelope.message` filled in.

    Example:
        >>> env = make_envelope("a@example.com", ["b@example.net"],
        ...                     headers={"Subject": "hi"}, body="Hello\r\n")
        >>> env.headers["Subject"], env.message
        ('hi', b'Hello\r\n')
    """
    rcpts = list(recipients)
    if isinstance(recipients, str):
        rcpts = [recipients]
    if headers is None:
        fields: list[tuple[str, str]] = [
            ("From", sender or "MAILER-DAEMON"),
            ("To", ", ".join(rcpts)),
            ("Subject", "Test message"),
            ("Date", email.utils.formatdate(timestamp)),
            ("Message-Id", f"<test.{next(_counter)}@example.test>"),
        ]
    elif isinstance(headers, Mapping):
        fields = list(headers.items())
    else:
        fields = list(headers)
    raw_body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    envelope = Envelope(sender, rcpts)
    envelope.parse(head.encode("utf-8", "surrogateescape") + b"\r\n" + raw_body)
    envelope.client.update(ip=client_ip, name=client_name)
    envelope.receiver = receiver
    envelope.timestamp = timestamp
    return envelope
