"""The QueueStorage conformance suite, for slimta's backends and yours.

Every storage backend shipped with slimta passes this suite; run it against
your own :class:`~slimta.queue.QueueStorage` subclass to check that
:class:`~slimta.queue.Queue` can rely on it.  Subclass
:class:`StorageConformance` in a ``test_*.py`` module (the class name must
start with ``Test`` for pytest to collect it) and implement
:meth:`~StorageConformance.make_storage` (a fresh, empty backend)::

    from slimta.testing.storage import StorageConformance

    class TestMyStorage(StorageConformance):
        def make_storage(self):
            return MyStorage()

Backends that persist implement
:meth:`~StorageConformance.reopen_storage` too (a new object over the same
data, as after a restart); shared backends whose ``wait()`` blocks set
:attr:`~StorageConformance.wait_returns_none` to False.  The suite covers
the QueueStorage contract that :class:`slimta.queue.Queue` relies on, then
runs a real Queue over the backend.  It needs pytest (``slimta[test]``).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import time
from email.message import Message
from typing import Any

import gevent
import pytest

from slimta.envelope import Envelope
from slimta.queue import Queue, QueueEntry, QueueStorage
from slimta.relay import Relay

__all__ = ["StorageConformance"]


def _envelope(
    sender: str = "alice@example.com", rcpts: tuple[str, ...] = ("b@x.test", "c@y.test", "d@z.test")
) -> Envelope:
    env = Envelope(sender, list(rcpts))
    env.parse(b"From: alice@example.com\r\nSubject: conformance\r\n\r\nbody \xe9\r\n.line\r\n")
    env.client["ip"] = "192.0.2.1"
    env.client["name"] = "client.test"
    env.receiver = "mx.test"
    env.timestamp = 1_700_000_000.5
    return env


class _CountingRelay(Relay):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        self.seen.append(list(envelope.recipients))
        return None


class StorageConformance:
    """The conformance tests; subclass as ``Test...`` and override :meth:`make_storage`.

    Attributes:
        wait_returns_none: True (the default) for a backend that is not
            shared, whose ``wait()`` returns None at once.
    """

    wait_returns_none = True

    def make_storage(self) -> QueueStorage:
        """Return a new, empty backend; every test calls this."""
        raise NotImplementedError

    def reopen_storage(self, storage: QueueStorage) -> QueueStorage | None:
        """Return a new backend object over the same data, or None if not persistent."""
        return None

    # -- write / get -------------------------------------------------------

    def test_write_returns_string_ids_and_get_round_trips(self) -> None:
        """Check: write returns string ids and get round trips."""
        storage = self.make_storage()
        env = _envelope()
        id_ = storage.write(env, 1234.5)
        assert isinstance(id_, str)
        assert id_
        got, attempts = storage.get(id_)
        assert attempts == 0
        assert got.sender == "alice@example.com"
        assert got.recipients == ["b@x.test", "c@y.test", "d@z.test"]
        assert isinstance(got.headers, Message)
        assert got.headers["Subject"] == "conformance"
        assert got.message == env.message
        assert got.flatten() == env.flatten()
        assert got.client["ip"] == "192.0.2.1"
        assert got.receiver == "mx.test"
        assert got.timestamp == 1_700_000_000.5

    def test_null_sender_round_trips(self) -> None:
        """Check: null sender round trips."""
        storage = self.make_storage()
        id_ = storage.write(_envelope(sender=""), 1.0)
        assert storage.get(id_)[0].sender == ""

    def test_get_unknown_id_raises_key_error(self) -> None:
        """Check: get unknown id raises key error."""
        storage = self.make_storage()
        with pytest.raises(KeyError):
            storage.get("0" * 32)

    def test_concurrent_writes_get_distinct_ids(self) -> None:
        """Check: concurrent writes get distinct ids."""
        storage = self.make_storage()
        jobs = [gevent.spawn(storage.write, _envelope(rcpts=(f"r{i}@x.test",)), float(i)) for i in range(100)]
        gevent.joinall(jobs, raise_error=True)
        ids = [job.get() for job in jobs]
        assert len(set(ids)) == 100
        for i, id_ in enumerate(ids):
            assert storage.get(id_)[0].recipients == [f"r{i}@x.test"]

    # -- metadata ------------------------------------------------------------

    def test_load_lists_every_envelope_with_its_timestamp(self) -> None:
        """Check: load lists every envelope with its timestamp."""
        storage = self.make_storage()
        ids = {storage.write(_envelope(), 100.0 + i): 100.0 + i for i in range(5)}
        loaded = {id_: ts for ts, id_ in storage.load()}
        assert loaded == ids

    def test_set_timestamp_changes_next_attempt(self) -> None:
        """Check: set timestamp changes next attempt."""
        storage = self.make_storage()
        id_ = storage.write(_envelope(), 10.0)
        storage.set_timestamp(id_, 99.25)
        assert {i: t for t, i in storage.load()}[id_] == 99.25

    def test_increment_attempts_counts_up(self) -> None:
        """Check: increment attempts counts up."""
        storage = self.make_storage()
        id_ = storage.write(_envelope(), 10.0)
        assert storage.increment_attempts(id_) == 1
        assert storage.increment_attempts(id_) == 2
        assert storage.get(id_)[1] == 2

    def test_set_recipients_delivered_hides_them_from_get(self) -> None:
        """Check: set recipients delivered hides them from get."""
        storage = self.make_storage()
        id_ = storage.write(_envelope(), 10.0)
        storage.set_recipients_delivered(id_, [0, 2])
        assert storage.get(id_)[0].recipients == ["c@y.test"]

    def test_set_recipients_delivered_indexes_are_relative_to_current_list(self) -> None:
        """Check: set recipients delivered indexes are relative to current list."""
        storage = self.make_storage()
        id_ = storage.write(_envelope(rcpts=("a@t", "b@t", "c@t", "d@t")), 10.0)
        storage.set_recipients_delivered(id_, [1])
        assert storage.get(id_)[0].recipients == ["a@t", "c@t", "d@t"]
        storage.set_recipients_delivered(id_, [2])
        assert storage.get(id_)[0].recipients == ["a@t", "c@t"]

    def test_remove_forgets_and_tolerates_unknown_ids(self) -> None:
        """Check: remove forgets and tolerates unknown ids."""
        storage = self.make_storage()
        keep = storage.write(_envelope(), 1.0)
        gone = storage.write(_envelope(), 2.0)
        storage.remove(gone)
        storage.remove(gone)
        storage.remove("f" * 32)
        with pytest.raises(KeyError):
            storage.get(gone)
        assert [i for _, i in storage.load()] == [keep]

    def test_get_info_reports_size(self) -> None:
        """Check: get info reports size."""
        storage = self.make_storage()
        assert storage.get_info()["size"] == 0
        ids = [storage.write(_envelope(), 1.0) for _ in range(3)]
        assert storage.get_info()["size"] == 3
        storage.remove(ids[0])
        assert storage.get_info()["size"] == 2

    def test_wait_returns_none_when_not_shared(self) -> None:
        """Check: wait returns none when not shared."""
        if not self.wait_returns_none:
            pytest.skip("shared backend: wait() blocks for other writers")
        assert self.make_storage().wait() is None

    # -- inspection ----------------------------------------------------------

    def test_inspect_lists_entries_with_metadata(self) -> None:
        """Check: inspect lists entries with metadata."""
        storage = self.make_storage()
        fresh = storage.write(_envelope(rcpts=("a@t",)), 50.0)
        tried = storage.write(_envelope(rcpts=("b@t", "c@t")), 60.0)
        storage.increment_attempts(tried)
        storage.set_timestamp(tried, 70.0)
        storage.set_last_error(tried, "450 4.0.0 try later")
        entries = {e.id: e for e in storage.inspect()}
        assert set(entries) == {fresh, tried}
        assert all(isinstance(e, QueueEntry) for e in entries.values())
        assert entries[fresh].recipients == ("a@t",)
        assert entries[fresh].state == "queued"
        assert entries[fresh].attempts == 0
        assert entries[tried].state == "deferred"
        assert entries[tried].attempts == 1
        assert entries[tried].next_attempt == 70.0
        assert entries[tried].sender == "alice@example.com"
        assert entries[tried].last_error in (None, "450 4.0.0 try later")

    # -- persistence ---------------------------------------------------------

    def test_everything_survives_reopening(self) -> None:
        """Check: everything survives reopening."""
        storage = self.make_storage()
        id_ = storage.write(_envelope(), 10.0)
        storage.increment_attempts(id_)
        storage.set_timestamp(id_, 20.0)
        storage.set_recipients_delivered(id_, [1])
        gone = storage.write(_envelope(), 11.0)
        storage.remove(gone)
        reopened = self.reopen_storage(storage)
        if reopened is None:
            pytest.skip("backend does not persist")
        assert [(t, i) for t, i in reopened.load()] == [(20.0, id_)]
        env, attempts = reopened.get(id_)
        assert attempts == 1
        assert env.recipients == ["b@x.test", "d@z.test"]
        assert env.message == _envelope().message

    # -- a real queue over the backend ---------------------------------------

    def test_queue_delivers_and_removes_through_this_backend(self) -> None:
        """Check: queue delivers and removes through this backend."""
        storage = self.make_storage()
        relay = _CountingRelay()
        queue = Queue(storage, relay, relay_timeout=5)
        queue.start()
        try:
            results = [queue.enqueue(_envelope(rcpts=(f"r{i}@t",))) for i in range(20)]
            assert all(isinstance(id_, str) for res in results for _, id_ in res)
            deadline = time.monotonic() + 5
            while storage.get_info()["size"] and time.monotonic() < deadline:
                gevent.sleep(0.005)
            assert storage.get_info()["size"] == 0
            assert sorted(r[0] for r in relay.seen) == sorted(f"r{i}@t" for i in range(20))
        finally:
            queue.kill()

    def test_queue_resumes_stored_envelopes_on_start(self) -> None:
        """Check: queue resumes stored envelopes on start."""
        storage = self.make_storage()
        for i in range(3):
            storage.write(_envelope(rcpts=(f"old{i}@t",)), time.time() - 1)
        relay = _CountingRelay()
        queue = Queue(storage, relay, relay_timeout=5)
        queue.start()
        try:
            deadline = time.monotonic() + 5
            while len(relay.seen) < 3 and time.monotonic() < deadline:
                gevent.sleep(0.005)
            assert sorted(r[0] for r in relay.seen) == ["old0@t", "old1@t", "old2@t"]
        finally:
            queue.kill()
