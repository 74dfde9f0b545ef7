"""A relay that accepts every message and delivers it nowhere.

Useful for tests, benchmarks and for a server that should accept mail and
drop it.  Every attempt succeeds.
"""

from __future__ import annotations

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

    def _attempt(self, envelope: Envelope, attempts: int) -> Reply:
        return self.attempt(envelope, attempts)

    def attempt(self, envelope: Envelope, attempts: int) -> Reply:
        """Drop ``envelope`` and report success.

        Args:
            envelope: The envelope to discard.
            attempts: Ignored.

        Returns:
            A ``250 2.0.0`` reply naming a random delivery identifier.
        """
        return Reply("250", f"2.0.0 Message Delivered; {uuid.uuid4().hex}")
