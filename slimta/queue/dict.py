"""In-memory queue storage in two dicts (or dict-like objects).

:class:`DictStorage` keeps envelopes and their metadata in memory, so the
queue is lost when the process ends: use it for tests, for relays that can
afford to lose mail, or give it dict-like persistent objects (a
:mod:`shelve`, say) for basic persistence.  Every change is written back
with ``db[id] = value`` so such objects see it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from slimta import logging as slimta_logging
from slimta.queue import QueueEntry, QueueStorage
from slimta.util._ids import random_id

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["DictStorage"]

_log = slimta_logging.getQueueStorageLogger(__name__)


class DictStorage(QueueStorage):
    """A :class:`~slimta.queue.QueueStorage` on two mappings.

    Ids are random UUID4 hex strings.

    Args:
        envelope_db: Mapping of id to :class:`~slimta.envelope.Envelope`;
            defaults to a new :class:`dict`.
        meta_db: Mapping of id to metadata; defaults to a new
            :class:`dict`.  Metadata is kept as a compact tuple
            ``(timestamp, attempts[, last_error])`` (about 130 bytes less
            per queued message than a dict); dicts with ``timestamp`` and
            ``attempts`` keys, as python-slimta wrote them, are read too.
    """

    def __init__(
        self,
        envelope_db: MutableMapping[str, Envelope] | None = None,
        meta_db: MutableMapping[str, Any] | None = None,
    ) -> None:
        self.env_db: MutableMapping[str, Envelope] = envelope_db if envelope_db is not None else {}
        self.meta_db: MutableMapping[str, Any] = meta_db if meta_db is not None else {}

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Store ``envelope`` under a new id (see :class:`QueueStorage`)."""
        while True:
            id_ = random_id()
            if id_ not in self.env_db:
                break
        self.env_db[id_] = envelope
        try:
            self.meta_db[id_] = (timestamp, 0)
        except BaseException:
            # Leave nothing half-written behind.
            self.env_db.pop(id_, None)
            raise
        _log.write(id_, envelope)
        return id_

    def _meta(self, id_: str) -> tuple[float, int, str | None]:
        meta = self.meta_db[id_]
        if isinstance(meta, dict):  # written by python-slimta
            return meta["timestamp"], int(meta["attempts"]), meta.get("last_error")
        return meta[0], int(meta[1]), meta[2] if len(meta) > 2 else None

    def _put(self, id_: str, timestamp: float, attempts: int, last_error: str | None) -> None:
        self.meta_db[id_] = (timestamp, attempts) if last_error is None else (timestamp, attempts, last_error)

    def set_timestamp(self, id: str, timestamp: float) -> None:  # noqa: A002 - 4.0 argument name
        """Change the next attempt time (see :class:`QueueStorage`)."""
        _, attempts, last_error = self._meta(id)
        self._put(id, timestamp, attempts, last_error)
        _log.update_meta(id, timestamp=timestamp)

    def increment_attempts(self, id: str) -> int:  # noqa: A002 - 4.0 argument name
        """Count one more attempt (see :class:`QueueStorage`)."""
        timestamp, attempts, last_error = self._meta(id)
        attempts += 1
        self._put(id, timestamp, attempts, last_error)
        _log.update_meta(id, attempts=attempts)
        return attempts

    def set_recipients_delivered(self, id: str, rcpt_indexes: Iterable[int]) -> None:  # noqa: A002 - 4.0 argument name
        """Drop delivered recipients (see :class:`QueueStorage`)."""
        envelope = self.env_db[id]
        for index in sorted(set(rcpt_indexes), reverse=True):
            del envelope.recipients[index]
        self.env_db[id] = envelope
        _log.update_meta(id, delivered_indexes=sorted(set(rcpt_indexes)))

    def set_last_error(self, id: str, error: str) -> None:  # noqa: A002 - matches the other methods
        """Remember the last failure (see :class:`QueueStorage`)."""
        timestamp, attempts, _ = self._meta(id)
        self._put(id, timestamp, attempts, error)

    def load(self) -> Iterator[tuple[float, str]]:
        """List ``(timestamp, id)`` for everything stored."""
        # A snapshot: writes may happen while the caller iterates.
        for id_ in list(self.meta_db):
            yield self._meta(id_)[0], id_

    def get(self, id: str) -> tuple[Envelope, int]:  # noqa: A002 - 4.0 argument name
        """Return ``(envelope, attempts)``; :class:`KeyError` if unknown."""
        attempts = self._meta(id)[1]
        return self.env_db[id], attempts

    def remove(self, id: str) -> None:  # noqa: A002 - 4.0 argument name
        """Forget ``id``; an unknown id is ignored."""
        self.meta_db.pop(id, None)
        self.env_db.pop(id, None)
        _log.remove(id)

    def get_info(self) -> dict[str, Any]:
        """Return ``{'size': envelopes, 'meta_size': metadata entries}``."""
        return {"size": len(self.env_db), "meta_size": len(self.meta_db)}

    def inspect(self) -> Iterator[QueueEntry]:
        """List every stored envelope (see :meth:`QueueStorage.inspect`)."""
        for id_ in list(self.meta_db):
            envelope = self.env_db.get(id_)
            if envelope is None:
                continue
            timestamp, attempts, last_error = self._meta(id_)
            yield QueueEntry(
                id=id_,
                sender=envelope.sender,
                recipients=tuple(envelope.recipients),
                attempts=attempts,
                next_attempt=timestamp,
                last_error=last_error,
                state="deferred" if attempts else "queued",
            )
