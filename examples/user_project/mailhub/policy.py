"""A queue policy rewriting recipients through an alias table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from slimta.envelope import Envelope
from slimta.policy import QueuePolicy

__all__ = ["AliasPolicy"]


class AliasPolicy(QueuePolicy):
    """Replace each aliased recipient by its targets (one level, no loops).

    Args:
        aliases: ``{"sales@example.com": ["ann@example.com", "bob@example.com"]}``.
    """

    def __init__(self, aliases: Mapping[str, Sequence[str]]) -> None:
        self.aliases = {key.lower(): list(targets) for key, targets in aliases.items()}

    def apply(self, envelope: Envelope) -> None:
        """Rewrite ``envelope.recipients`` in place, dropping duplicates."""
        rewritten: list[str] = []
        for rcpt in envelope.recipients:
            for target in self.aliases.get(rcpt.lower(), [rcpt]):
                if target not in rewritten:
                    rewritten.append(target)
        envelope.recipients = rewritten
