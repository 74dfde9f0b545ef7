"""In-memory queue storage in two dicts (or dict-like objects).

:class:`DictStorage` keeps envelopes and their metadata in memory, so the
queue is lost when the process ends: use it for tests, for relays that can
afford to lose mail, or give it dict-like persistent objects (a
:mod:`shelve`, say) for basic persistence.  Every change is written back
with ``db[id] = value`` so such objects see it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from slimta import logging as slimta_logging
from slimta.queue import QueueEntry, QueueStorage

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
        meta_db: Mapping of id to metadata (a dict with ``timestamp``,
            ``attempts`` and, after a failure, ``last_error``); defaults to
            a new :class:`dict`.
    """

    def __init__(
        self,
        envelope_db: MutableMapping[str, Envelope] | None = None,
        meta_db: MutableMapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.env_db: MutableMapping[str, Envelope] = envelope_db if envelope_db is not None else {}
        self.meta_db: MutableMapping[str, dict[str, Any]] = meta_db if meta_db is not None else {}

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Store ``envelope`` under a new id (see :class:`QueueStorage`)."""
        while True:
            id_ = uuid.uuid4().hex
            if id_ not in self.env_db:
                break
        self.env_db[id_] = envelope
        try:
            self.meta_db[id_] = {"timestamp": timestamp, "attempts": 0}
        except BaseException:
            # Leave nothing half-written behind.
            self.env_db.pop(id_, None)
            raise
        _log.write(id_, envelope)
        return id_

    def _update(self, id_: str, **changes: Any) -> dict[str, Any]:
        meta = self.meta_db[id_]
        meta.update(changes)
        self.meta_db[id_] = meta
        return meta

    def set_timestamp(self, id: str, timestamp: float) -> None:  # noqa: A002 - 4.0 argument name
        """Change the next attempt time (see :class:`QueueStorage`)."""
        self._update(id, timestamp=timestamp)
        _log.update_meta(id, timestamp=timestamp)

    def increment_attempts(self, id: str) -> int:  # noqa: A002 - 4.0 argument name
        """Count one more attempt (see :class:`QueueStorage`)."""
        attempts = int(self.meta_db[id]["attempts"]) + 1
        self._update(id, attempts=attempts)
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
        self._update(id, last_error=error)

    def load(self) -> Iterator[tuple[float, str]]:
        """List ``(timestamp, id)`` for everything stored."""
        # A snapshot: writes may happen while the caller iterates.
        for id_, meta in list(self.meta_db.items()):
            yield meta["timestamp"], id_

    def get(self, id: str) -> tuple[Envelope, int]:  # noqa: A002 - 4.0 argument name
        """Return ``(envelope, attempts)``; :class:`KeyError` if unknown."""
        meta = self.meta_db[id]
        return self.env_db[id], int(meta["attempts"])

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
        for id_, meta in list(self.meta_db.items()):
            envelope = self.env_db.get(id_)
            if envelope is None:
                continue
            attempts = int(meta["attempts"])
            yield QueueEntry(
                id=id_,
                sender=envelope.sender,
                recipients=tuple(envelope.recipients),
                attempts=attempts,
                next_attempt=meta["timestamp"],
                last_error=meta.get("last_error"),
                state="deferred" if attempts else "queued",
            )
