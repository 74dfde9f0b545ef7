"""A queue storage backend of our own: everything in one dict of records."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from slimta.envelope import Envelope
from slimta.queue import QueueStorage

__all__ = ["MemoryStorage"]


@dataclass
class _Record:
    envelope: Envelope
    timestamp: float
    attempts: int = 0


class MemoryStorage(QueueStorage):
    """Keep queued envelopes in memory (a copy, so callers cannot change them)."""

    def __init__(self) -> None:
        self.records: dict[str, _Record] = {}

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Store a copy of ``envelope``; return its new id."""
        id_ = uuid.uuid4().hex
        self.records[id_] = _Record(envelope.copy(), timestamp)
        return id_

    def set_timestamp(self, id: str, timestamp: float) -> None:  # noqa: A002 - the QueueStorage name
        """Change when ``id`` is next attempted."""
        self.records[id].timestamp = timestamp

    def increment_attempts(self, id: str) -> int:  # noqa: A002
        """Count one more attempt."""
        self.records[id].attempts += 1
        return self.records[id].attempts

    def set_recipients_delivered(self, id: str, rcpt_indexes: Iterable[int]) -> None:  # noqa: A002
        """Drop the delivered recipients."""
        env = self.records[id].envelope
        done = set(rcpt_indexes)
        env.recipients = [rcpt for i, rcpt in enumerate(env.recipients) if i not in done]

    def load(self) -> list[tuple[float, str]]:
        """List ``(timestamp, id)`` of everything stored."""
        return [(record.timestamp, id_) for id_, record in self.records.items()]

    def get(self, id: str) -> tuple[Envelope, int]:  # noqa: A002
        """Return a copy of the envelope, and its attempt count."""
        record = self.records[id]
        return record.envelope.copy(), record.attempts

    def remove(self, id: str) -> None:  # noqa: A002
        """Forget ``id`` (unknown ids are ignored)."""
        self.records.pop(id, None)
