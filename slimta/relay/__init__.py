"""Relays: the last stage of a slimta pipeline, moving an envelope onward.

A relay takes an :class:`~slimta.envelope.Envelope` out of the queue and
hands it to the next hop: another SMTP server, a local delivery program, an
HTTP endpoint, or nowhere at all.  Every relay derives from :class:`Relay`
and reports failure by raising one of the two error classes below, each
carrying the SMTP :class:`~slimta.smtp.reply.Reply` that explains it:

* :class:`TransientRelayError` (4xx): the queue keeps the message and tries
  again later, following its back-off schedule;
* :class:`PermanentRelayError` (5xx): the queue gives up and bounces the
  message to its sender.

A relay may also report one outcome per recipient by returning a mapping
(see :meth:`Relay.attempt`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimta.core import SlimtaError
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["PermanentRelayError", "Relay", "RelayError", "TransientRelayError"]


class RelayError(SlimtaError):
    """A delivery attempt failed.

    Use one of the two subclasses; the queue treats a bare :class:`RelayError`
    like a transient one.

    Args:
        msg: What went wrong, in words.  It becomes the exception text and,
            when no ``reply`` is given, the text of the default reply.
        reply: The SMTP reply that describes the failure (typically the one
            the next hop sent).  Defaults to the class's own code and
            enhanced status code followed by ``msg``.

    Attributes:
        reply: The :class:`~slimta.smtp.reply.Reply` describing the failure;
            it ends up in the bounce or in the queue's retry log.
    """

    _default_code = "450"
    _default_esc = "4.0.0"

    def __init__(self, msg: str, reply: Reply | None = None) -> None:
        super().__init__(msg)
        if reply is None:
            reply = Reply(self._default_code, f"{self._default_esc} {msg}")
        self.reply: Reply = reply


class PermanentRelayError(RelayError):
    """Delivery will never succeed, however often it is tried (a 5xx).

    The default reply is ``550 5.0.0 <msg>``.
    """

    _default_code = "550"
    _default_esc = "5.0.0"


class TransientRelayError(RelayError):
    """Delivery failed this time but may work later (a 4xx).

    The default reply is ``450 4.0.0 <msg>``.
    """

    _default_code = "450"
    _default_esc = "4.0.0"


class Relay:
    """Base class of every relay.

    Subclasses implement :meth:`attempt`.  The queue calls :meth:`_attempt`,
    which first lets each relay policy added with :meth:`add_policy` look at
    (and change) the envelope, then calls :meth:`attempt`.
    """

    def __init__(self) -> None:
        self.relay_policies: list[Any] = []

    def add_policy(self, policy: Any) -> None:
        """Add a relay policy, run before every delivery attempt.

        Args:
            policy: A :class:`slimta.policy.RelayPolicy` (any object with an
                ``apply(envelope)`` method is accepted).  Policies run in the
                order they were added; one may raise a :class:`RelayError`
                to fail the attempt.

        Raises:
            TypeError: ``policy`` has no ``apply`` method.
        """
        # Duck typing rather than an isinstance check keeps slimta.relay free
        # of an import of slimta.policy, which itself needs the relay errors.
        if not callable(getattr(policy, "apply", None)):
            raise TypeError("Argument not a RelayPolicy.")
        self.relay_policies.append(policy)

    def _run_policies(self, envelope: Envelope) -> None:
        for policy in self.relay_policies:
            policy.apply(envelope)

    def _attempt(self, envelope: Envelope, attempts: int) -> Any:
        self._run_policies(envelope)
        return self.attempt(envelope, attempts)

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        """Try to deliver ``envelope``; subclasses must override this.

        The result applies to all recipients when the method returns
        ``None`` or a :class:`~slimta.smtp.reply.Reply` (delivered) or raises
        a :class:`RelayError` (failed).  To report each recipient
        separately, return a mapping from recipient address to ``None`` or
        a ``Reply`` (delivered) or a :class:`RelayError` instance (failed);
        a sequence in the order of ``envelope.recipients`` is accepted too.
        The queue records delivered recipients so they are never sent
        twice, bounces the permanently failed ones and retries the rest.

        Args:
            envelope: The envelope to deliver.
            attempts: How many earlier attempts the envelope has had.

        Returns:
            ``None``, a ``Reply``, or per-recipient results, as described.

        Raises:
            PermanentRelayError: Delivery to every recipient failed for good.
            TransientRelayError: Delivery failed and may work later.
        """
        raise NotImplementedError()

    def kill(self) -> None:
        """Stop any greenlets the relay runs and close what it holds open.

        The base implementation has nothing to stop.
        """
