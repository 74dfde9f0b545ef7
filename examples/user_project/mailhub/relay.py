"""A relay delivering into in-memory mailboxes, with a result per recipient."""

from __future__ import annotations

from typing import Any

from slimta.envelope import Envelope
from slimta.relay import PermanentRelayError, Relay, TransientRelayError
from slimta.smtp.reply import Reply

__all__ = ["MailboxRelay"]


class MailboxRelay(Relay):
    """Deliver to known users' mailboxes; unknown users fail, full ones retry.

    Args:
        users: The addresses that have a mailbox.
        quota: The most messages a mailbox holds.

    Attributes:
        mailboxes: ``{address: [message bytes, ...]}``.
    """

    def __init__(self, users: list[str], quota: int = 100) -> None:
        super().__init__()
        self.quota = quota
        self.mailboxes: dict[str, list[bytes]] = {user: [] for user in users}

    def attempt(self, envelope: Envelope, attempts: int) -> dict[str, Any]:
        """Deliver to each recipient separately."""
        header, body = envelope.flatten()
        results: dict[str, Any] = {}
        for rcpt in envelope.recipients:
            box = self.mailboxes.get(rcpt)
            if box is None:
                results[rcpt] = PermanentRelayError("No such user", Reply("550", "5.1.1 No such user"))
            elif len(box) >= self.quota:
                results[rcpt] = TransientRelayError("Mailbox full", Reply("452", "4.2.2 Mailbox full"))
            else:
                box.append(header + body)
                results[rcpt] = None
        return results
