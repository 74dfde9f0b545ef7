"""A queue stand-in that delivers at once instead of storing.

:class:`ProxyQueue` has the interface of :class:`~slimta.queue.Queue` but
keeps nothing: :meth:`ProxyQueue.enqueue` makes the delivery attempt itself
and returns only when it is over, so the edge answers its client with the
relay's verdict.  There are no retries and no bounces; a failure goes back
to the client, which keeps responsibility for the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimta import logging as slimta_logging
from slimta.queue._outcome import classify
from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.util._ids import random_id

if TYPE_CHECKING:
    from slimta.envelope import Envelope
    from slimta.queue import QueueError
    from slimta.relay import Relay

__all__ = ["ProxyQueue"]


class ProxyQueue:
    """Deliver each envelope synchronously through ``relay``.

    Args:
        relay: The :class:`~slimta.relay.Relay` to deliver with.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def add_policy(self, *args: Any) -> None:
        """Not supported: a proxy has no queue policies.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError("ProxyQueue objects do not support add_policy()")

    def start(self) -> None:
        """Do nothing (there is no greenlet to start)."""

    def flush(self) -> None:
        """Do nothing (nothing is ever waiting)."""

    def kill(self) -> None:
        """Do nothing (there is no greenlet to stop)."""

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str | RelayError | QueueError]]:
        """Deliver ``envelope`` now.

        The delivery succeeds only if every recipient was delivered.  When a
        relay reports recipients separately and only some fail, the whole
        message is reported failed (permanently if every failure was
        permanent), so the client retries rather than mail being dropped
        silently; recipients already delivered may then receive it twice.

        Args:
            envelope: The envelope to deliver.

        Returns:
            ``[(envelope, id)]`` with a random id when delivered, or
            ``[(envelope, error)]`` with the :class:`~slimta.relay.RelayError`
            that explains the failure.
        """
        try:
            result: Any = self.relay._attempt(envelope, 0)
        except RelayError as exc:
            return [(envelope, exc)]
        except Exception as exc:  # noqa: BLE001 - report a relay bug as a temporary failure
            slimta_logging.log_exception(__name__)
            return [(envelope, TransientRelayError(f"Unhandled delivery error: {exc}"))]
        outcomes = classify(result, list(envelope.recipients))
        if outcomes.transient:
            reply = outcomes.transient[0][1]
            return [(envelope, TransientRelayError(reply.message or "Delivery failed", reply))]
        if outcomes.permanent:
            reply = outcomes.permanent[0][1]
            return [(envelope, PermanentRelayError(reply.message or "Delivery failed", reply))]
        return [(envelope, random_id())]
