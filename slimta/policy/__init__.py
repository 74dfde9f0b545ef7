"""Policies: code that inspects or changes envelopes on their way through.

There are two kinds, told apart by when they run:

* A :class:`QueuePolicy` runs once, before the queue stores an envelope
  (``Queue.add_policy``).  Its changes are stored with the message, so it is
  the place for work that should happen once: adding headers, rewriting
  recipients, splitting an envelope, scanning for spam.
* A :class:`RelayPolicy` runs before every delivery attempt
  (``Relay.add_policy``).  Its changes go to the relay but are not stored.
  It may refuse the attempt by raising
  :class:`~slimta.relay.TransientRelayError` or
  :class:`~slimta.relay.PermanentRelayError`.

Ready-made policies live in :mod:`slimta.policy.headers`,
:mod:`slimta.policy.forward`, :mod:`slimta.policy.split` and
:mod:`slimta.policy.spamassassin`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from slimta.core import SlimtaError

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["PolicyError", "QueuePolicy", "RelayPolicy"]


class PolicyError(SlimtaError):
    """Base class of the errors raised by slimta's policies."""


class QueuePolicy:
    """Base class of policies run once, before an envelope is queued.

    Subclasses override :meth:`apply`::

        class StampQueued(QueuePolicy):
            def apply(self, envelope):
                envelope.headers["X-Queued-At"] = str(time.time())

        queue.add_policy(StampQueued())
    """

    def apply(self, envelope: Envelope) -> Iterable[Envelope] | None:
        """Inspect or change an envelope before it is stored.

        Args:
            envelope: The envelope about to be queued.  It may be changed in
                place.

        Returns:
            ``None`` (or an empty iterable) to go on with ``envelope``;
            otherwise the envelopes that replace it -- the queue then stores
            and delivers each of those and drops ``envelope``.

        Raises:
            NotImplementedError: The subclass did not override this method.
        """
        raise NotImplementedError


class RelayPolicy:
    """Base class of policies run before each delivery attempt.

    Subclasses override :meth:`apply`::

        class StampAttempt(RelayPolicy):
            def apply(self, envelope):
                envelope.headers["X-Attempt-At"] = str(time.time())

        relay.add_policy(StampAttempt())
    """

    def apply(self, envelope: Envelope) -> None:
        """Inspect or change an envelope just before a delivery attempt.

        Changes reach the relay for this attempt only; storage does not see
        them.  The return value is ignored.

        Args:
            envelope: The envelope about to be delivered.

        Raises:
            slimta.relay.TransientRelayError: Fail this attempt; it will be
                retried later.
            slimta.relay.PermanentRelayError: Fail the message for every
                recipient; it will be bounced.
            NotImplementedError: The subclass did not override this method.
        """
        raise NotImplementedError
