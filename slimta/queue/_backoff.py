"""The default retry schedule of :class:`slimta.queue.Queue`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["ExponentialBackoff"]


class ExponentialBackoff:
    """The default retry schedule: Postfix's, as RFC 5321 s4.5.4.1 asks.

    The first retry comes ``initial`` seconds after the first failure, and
    each later one waits ``factor`` times longer, up to ``maximum``.  Once
    the message is older than ``lifetime`` seconds the queue gives up and
    bounces it.  The defaults are Postfix's ``minimal_backoff_time`` (300 s),
    ``maximal_backoff_time`` (4000 s) and ``maximal_queue_lifetime`` (5 days).

    python-slimta's default gives up at the first temporary failure; pass
    ``backoff=lambda envelope, attempts: None`` to :class:`Queue` for that.

    .. versionadded:: 0.1.0 (not in python-slimta).

    Args:
        initial: Seconds before the first retry.
        maximum: The longest wait between attempts.
        factor: How much each wait grows over the previous one.
        lifetime: Give up on messages older than this many seconds.  The
            age comes from ``envelope.timestamp`` (set when the message was
            received); without one it is estimated from the waits so far.

    Example:
        ``Queue(store, relay, backoff=ExponentialBackoff(initial=60))``
    """

    def __init__(
        self,
        initial: float = 300.0,
        maximum: float = 4000.0,
        factor: float = 2.0,
        lifetime: float = 5 * 86400.0,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.lifetime = lifetime

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        # Past ~64 doublings the cap has long been reached; stop the power
        # from overflowing a float.
        exponent = min(max(attempts, 1) - 1, 64)
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def __call__(self, envelope: Envelope, attempts: int) -> float | None:
        """Return the seconds until the next attempt, or ``None`` to give up."""
        received = getattr(envelope, "timestamp", None)
        if received is not None:
            age = time.time() - received
        else:
            age = sum(self.delay(n) for n in range(1, min(attempts, 10_000)))
        if age >= self.lifetime:
            return None
        return self.delay(attempts)
