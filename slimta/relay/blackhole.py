"""A relay that accepts every message and delivers it nowhere.

Useful for tests, benchmarks and for a server that should accept mail and
drop it.  Every attempt succeeds.
"""

from __future__ import annotations

import itertools
import uuid
from typing import TYPE_CHECKING

from slimta.relay import Relay
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["BlackholeRelay"]


class BlackholeRelay(Relay):
    """A :class:`~slimta.relay.Relay` that discards every envelope.

    Relay policies can be added but are never run: nothing is delivered, so
    there is nothing for them to prepare.
    """

    def __init__(self) -> None:
        super().__init__()
        # A random prefix and a counter make unique delivery ids without
        # the cost of a UUID per message.
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def _attempt(self, envelope: Envelope, attempts: int) -> Reply:
        return self.attempt(envelope, attempts)

    def attempt(self, envelope: Envelope, attempts: int) -> Reply:
        """Drop ``envelope`` and report success.

        Args:
            envelope: The envelope to discard.
            attempts: Ignored.

        Returns:
            A ``250 2.0.0`` reply naming a unique delivery identifier.
        """
        return Reply("250", f"2.0.0 Message Delivered; {self._prefix}{next(self._counter):016x}")
