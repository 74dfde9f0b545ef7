"""Log lines for queue storage, as ``queue:<id>:<operation>``.

Everything is logged at ``DEBUG``; with that level disabled the methods
return before formatting anything.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from slimta.logging._format import format_line

__all__ = ["QueueStorageLogger"]


class _Envelope(Protocol):
    sender: Any
    recipients: Any


class QueueStorageLogger:
    """Log what a :class:`~slimta.queue.QueueStorage` does with envelopes.

    Obtain one with :func:`slimta.logging.getQueueStorageLogger`.

    Args:
        log: The :class:`logging.Logger` to write to.
    """

    def __init__(self, log: logging.Logger) -> None:
        self.logger = log

    def _log(self, id_: object, operation: str, **data: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(format_line("queue", id_, operation, data))

    def write(self, id: object, envelope: _Envelope) -> None:  # noqa: A002 - 4.0 argument name
        """Log an envelope written to storage, with its sender and recipients.

        Args:
            id: The storage ID of the envelope.
            envelope: The :class:`~slimta.envelope.Envelope` written.
        """
        self._log(id, "write", sender=envelope.sender, recipients=envelope.recipients)

    def update_meta(self, id: object, **what: Any) -> None:  # noqa: A002 - 4.0 argument name
        """Log a change to an envelope's metadata (attempts, next delivery...).

        Args:
            id: The storage ID of the envelope.
            **what: The metadata changed, as ``key=value``.
        """
        self._log(id, "meta", **what)

    def remove(self, id: object) -> None:  # noqa: A002 - 4.0 argument name
        """Log an envelope removed from storage (delivered or bounced).

        Args:
            id: The storage ID of the envelope.
        """
        self._log(id, "remove")
