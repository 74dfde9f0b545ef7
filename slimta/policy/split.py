"""Split an envelope with several recipients into several envelopes.

Useful before a relay that delivers best one recipient, or one destination
domain, at a time -- :class:`~slimta.relay.smtp.mx.MxSmtpRelay` picks one
MX per envelope, so recipients at different domains must be split first.

Each new envelope is a copy made with :meth:`Envelope.copy
<slimta.envelope.Envelope.copy>`: it has its own headers and DSN data, and
shares only the immutable body bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimta.policy import QueuePolicy

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["RecipientDomainSplit", "RecipientSplit"]


class RecipientSplit(QueuePolicy):
    """Give each recipient an envelope of its own.

    An envelope with zero or one recipient is left as it is.
    """

    def apply(self, envelope: Envelope) -> list[Envelope] | None:
        """Split the envelope, one copy per recipient.

        Args:
            envelope: The envelope to split.

        Returns:
            The copies, in recipient order, or ``None`` when there is at
            most one recipient.
        """
        if len(envelope.recipients) <= 1:
            return None
        return [envelope.copy([rcpt]) for rcpt in envelope.recipients]


class RecipientDomainSplit(QueuePolicy):
    """Give each recipient domain an envelope of its own.

    Domains are compared without regard to case.  A recipient without a
    domain (no ``@``, or nothing after the last one) gets an envelope of its
    own.  An envelope whose recipients all share one domain is left as it is.
    """

    @staticmethod
    def _get_domain(rcpt: str) -> str | None:
        """Return the lower-cased domain of an address, or ``None``."""
        _, at, domain = rcpt.rpartition("@")
        if not at or not domain:
            return None
        return domain.lower()

    def apply(self, envelope: Envelope) -> list[Envelope] | None:
        """Split the envelope, one copy per recipient domain.

        Args:
            envelope: The envelope to split.

        Returns:
            The copies -- first one per domain, in order of first
            appearance, then one per recipient without a domain -- or
            ``None`` when no split is needed.
        """
        groups: dict[str, list[str]] = {}
        no_domain: list[str] = []
        for rcpt in envelope.recipients:
            domain = self._get_domain(rcpt)
            if domain is None:
                no_domain.append(rcpt)
            else:
                groups.setdefault(domain, []).append(rcpt)
        if len(groups) + len(no_domain) <= 1:
            return None
        copies = [envelope.copy(rcpts) for rcpts in groups.values()]
        copies.extend(envelope.copy([rcpt]) for rcpt in no_domain)
        return copies
