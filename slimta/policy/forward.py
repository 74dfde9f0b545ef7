"""Rewrite envelope recipients with regular expressions (aliases, forwarding).

::

    forward = Forward()
    forward.add_mapping(r"^postmaster@.*$", "admin@example.com")
    forward.add_mapping(r"@old\\.example$", "@new.example")
    queue.add_policy(forward)

Each recipient is tried against the rules in the order they were added; the
first rule that matches rewrites it (with :func:`re.subn`) and the others are
skipped.  A rule whose result would be empty leaves the recipient alone.

DSN requests (:mod:`slimta.bounce.dsn`) follow a rewritten recipient, and
when the sender gave no ``ORCPT`` the address before rewriting is recorded
as its ``ORCPT``, so notices still name the address the sender used.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from slimta.bounce.dsn import RecipientDsn, get_dsn, get_recipient_dsn, set_recipient_dsn
from slimta.policy import PolicyError, QueuePolicy

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["Forward"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: A replacement: a template string for :func:`re.sub`, or a function of the match.
Replacement = str | Callable[[re.Match[str]], str]


class Forward(QueuePolicy):
    """A :class:`~slimta.policy.QueuePolicy` that rewrites recipients.

    Attributes:
        mapping: The rules, as ``(compiled pattern, replacement, count)``
            tuples in the order they are tried.
    """

    def __init__(self) -> None:
        self.mapping: list[tuple[re.Pattern[str], Replacement, int]] = []

    def add_mapping(self, pattern: str | re.Pattern[str], repl: Replacement, count: int = 0) -> None:
        """Add a rewriting rule after the existing ones.

        Args:
            pattern: The regular expression a recipient is searched for.
            repl: What replaces each match, as for :func:`re.sub`.
            count: Maximum number of replacements in one recipient; ``0``
                for all matches.
        """
        self.mapping.append((re.compile(pattern), repl, count))

    def _rewrite(self, rcpt: str) -> str:
        for pattern, repl, count in self.mapping:
            new_rcpt, changes = pattern.subn(repl, rcpt, count)
            if changes and new_rcpt:
                if _CONTROL.search(new_rcpt):
                    raise PolicyError(f"forwarding rule {pattern.pattern!r} made {rcpt!r} into {new_rcpt!r}")
                return new_rcpt
        return rcpt

    def apply(self, envelope: Envelope) -> None:
        """Rewrite the envelope's recipients in place.

        Args:
            envelope: The envelope to change.

        Raises:
            PolicyError: A rule produced an address with a control character.
        """
        has_dsn = get_dsn(envelope) is not None
        for i, old in enumerate(envelope.recipients):
            new = self._rewrite(old)
            if new == old:
                continue
            envelope.recipients[i] = new
            if has_dsn:
                rdsn = get_recipient_dsn(envelope, old) or RecipientDsn()
                if rdsn.orcpt is None:
                    rdsn = RecipientDsn(notify=rdsn.notify, orcpt=("rfc822", old))
                set_recipient_dsn(envelope, new, rdsn)
