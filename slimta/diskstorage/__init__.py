"""Crash-safe queue storage in plain files: :class:`DiskStorage`.

.. versionadded:: 0.1.0 (python-slimta 5.x has a module of this name: same
   constructor, a different and incompatible file format, no ``pyaio``.)

Theory of operation
-------------------

* **Durable before 250.**  :meth:`DiskStorage.write` writes the record to a
  temporary file, ``fsync``\\s it, renames it into ``env_dir`` and
  ``fsync``\\s ``env_dir`` before it returns the id; the SMTP edge answers
  ``250`` only then.  A crash at any point leaves either no record (the
  client got no ``250`` and sends again) or a complete one.  Metadata
  updates go the same way (temp file, fsync, rename, directory fsync), and
  :meth:`~DiskStorage.remove` fsyncs the directories after unlinking.
* **Group commit.**  Concurrent writers share directory fsyncs: a writer
  whose rename is done waits for the next fsync of that directory to
  *start* and finish, and one fsync covers every rename before it
  (:attr:`DiskStorage.group_commit`).  File fsyncs stay one per file, in
  parallel worker threads (the kernel's journal merges those).
* **Off the hub.**  Every file system call runs in gevent's thread pool
  (``gevent.get_hub().threadpool``), so a slow disk delays only the
  greenlet that waits for it.
* **One filesystem.**  ``tmp_dir`` (default ``env_dir/.tmp``) must be on
  the same filesystem as ``env_dir`` and ``meta_dir`` -- a rename across
  filesystems is not atomic (python-slimta used the system temp directory,
  and failed with ``EXDEV``) -- and the constructor checks it.
* **Full disk.**  ``ENOSPC``, ``EDQUOT``, ``EIO`` or ``EROFS`` while
  storing a new envelope raise :class:`DiskStorageError` whose reply is
  ``452 4.3.1 Insufficient system storage``; the temporary file is removed
  and what is already queued is untouched.
* **Start-up.**  :meth:`~DiskStorage.load` deletes temporary files left by
  a crash (never acknowledged), checks every record, and moves a damaged
  one -- and a meta file without its envelope -- to ``quarantine_dir``
  (default ``env_dir/quarantine``) with an ``ERROR`` log line.  A damaged
  meta file next to an intact envelope is quarantined too, and the
  envelope is delivered again from its initial metadata: a duplicate is
  better than a loss.
* **One process per spool.**  The metadata of known envelopes is cached in
  memory; two processes must not share the directories (use
  :mod:`slimta.redisstorage` for several nodes).

File layout and format (version 1)
----------------------------------

``env_dir/<id>.env`` holds one envelope as written by :meth:`write` (never
changed afterwards); ``meta_dir/<id>.meta`` exists once its metadata has
changed.  Ids are 32 lowercase hex digits.  Both are *records*::

    SLIMTAQ 1 <kind> <json-length> <data-length> <crc32>\\n
    <JSON document: json-length bytes, ASCII>
    <data: data-length bytes>
    END\\n

``kind`` is ``E`` (envelope) or ``M`` (meta); the lengths are decimal; the
CRC-32 (8 lowercase hex digits, :func:`zlib.crc32`) covers the JSON bytes
followed by the data.  A record is valid only if the magic, version and
kind match, the file is exactly as long as the header says, it ends with
``END\\n`` and the CRC matches.  Nothing is ever unpickled: a damaged or
foreign file cannot run code.

The ``E`` document has ``id``, ``sender``, ``recipients`` (all of them, as
received), ``client`` (ip, host, name, protocol, auth), ``receiver``,
``received`` (the envelope's timestamp), ``dsn``
(:meth:`~slimta.bounce.dsn.EnvelopeDsn.to_dict` or ``null``), ``headers``
(the length of the header section at the start of the data, ``null`` for an
envelope without headers), ``unixfrom``, ``body`` (false for an envelope
without a body), ``extra`` (other envelope attributes that JSON can hold)
and ``meta`` (``{"timestamp": <next attempt>, "attempts": 0}``).  Its data is
the header section as :meth:`~slimta.envelope.Envelope.flatten` writes it
(ending with the empty line) followed by the body bytes exactly as stored.

The ``M`` document has ``id``, ``timestamp`` (next attempt), ``attempts``,
``rcpt_count``, ``delivered`` (indexes into the stored recipient list) and
``last_error``; its data is empty.

What lives where: this module holds :class:`DiskStorage`'s work on the hub
(the metadata cache, per-id locks, group commit, error replies, logging);
the file steps it runs in worker threads (durable writes, unlinks, reads,
quarantine, the start-up scan) are inherited from ``_files.py``, and the
record format (encoding, decoding, the CRC) is in ``_format.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from gevent.lock import Semaphore

from slimta import logging as slimta_logging
from slimta.diskstorage import _format
from slimta.diskstorage._files import _ENV, _ID, _META, _TMP, SpoolFilesMixin
from slimta.diskstorage._format import StoredMeta
from slimta.envelope import EnvelopeError
from slimta.queue import QueueEntry, QueueError, QueueStorage
from slimta.smtp.reply import Reply
from slimta.util._groupsync import GroupFsync
from slimta.util._ids import random_id

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["DiskStorage", "DiskStorageError"]

_log = slimta_logging.getQueueStorageLogger(__name__)
_errors = logging.getLogger(__name__)

# The reply for a full or failing disk (RFC 3463 X.3.1).
_NO_SPACE = Reply("452", "4.3.1 Insufficient system storage")
_FAILED = Reply("451", "4.3.0 Error queuing message, try again later")
_UNSTORABLE = Reply("554", "5.6.0 Message could not be stored")
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


class DiskStorageError(QueueError):
    """The disk spool cannot do what was asked.

    Raised for a spool that cannot be set up (directories on different
    filesystems) and for failed writes; :attr:`reply` is what an edge
    should answer (``452 4.3.1`` for a full or failing disk).
    """


class DiskStorage(QueueStorage, SpoolFilesMixin):
    """A :class:`~slimta.queue.QueueStorage` in files, fsync'd before replying.

    Args:
        env_dir: Directory for envelope files (written once, possibly large).
            Created if missing.
        meta_dir: Directory for metadata files (small, rewritten on every
            attempt).  May be ``env_dir`` itself.  Created if missing.
        tmp_dir: Scratch directory where files are written before being
            renamed into place; default ``env_dir/.tmp``.
        quarantine_dir: Where damaged files are moved by :meth:`load`;
            default ``env_dir/quarantine``.  (Beyond python-slimta.)

    Raises:
        DiskStorageError: ``tmp_dir``, ``env_dir`` and ``meta_dir`` are not
            all on one filesystem.
    """

    #: Coalesce concurrent directory fsyncs (one fsync call covers the
    #: renames of every writer waiting for it).  With ``False`` each writer
    #: fsyncs the directory itself in its worker thread and only the
    #: kernel's journal merges them: one trip to the thread pool less, but
    #: measured about 10% slower at 50 sessions (bench/bench_storage_disk.py).
    group_commit: bool = True

    def __init__(
        self,
        env_dir: str | os.PathLike[str],
        meta_dir: str | os.PathLike[str],
        tmp_dir: str | os.PathLike[str] | None = None,
        quarantine_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.env_dir = os.path.abspath(env_dir)
        self.meta_dir = os.path.abspath(meta_dir)
        self.tmp_dir = os.path.abspath(tmp_dir) if tmp_dir is not None else os.path.join(self.env_dir, ".tmp")
        self.quarantine_dir = (
            os.path.abspath(quarantine_dir)
            if quarantine_dir is not None
            else os.path.join(self.env_dir, "quarantine")
        )
        for path in (self.env_dir, self.meta_dir, self.tmp_dir, self.quarantine_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)
        device = os.stat(self.env_dir).st_dev
        for name in ("meta_dir", "tmp_dir"):
            if os.stat(getattr(self, name)).st_dev != device:
                raise DiskStorageError(
                    f"{name} {getattr(self, name)!r} is not on the filesystem of env_dir "
                    f"{self.env_dir!r}: renames into place would not be atomic"
                )
        self._syncers = {
            path: GroupFsync(functools.partial(self._call, self._fsync_dir, path))
            for path in {self.env_dir, self.meta_dir}
        }
        self._cache: dict[str, StoredMeta] = {}
        self._locks: dict[str, tuple[Semaphore, list[int]]] = {}
        self._inflight: set[str] = set()
        self._tmp_serial = itertools.count()

    # -- hooks -----------------------------------------------------------------

    def write_data(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` to the file descriptor ``fd``.

        Every byte the spool writes goes through here, in a worker thread.
        Override it to inject faults in tests (raise ``OSError(errno.ENOSPC,
        ...)``, say); the storage must then behave as on a full disk.
        """
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def checkpoint(self, step: str, path: str) -> None:
        """Called, in a worker thread, after each durable I/O step.

        ``step`` is ``'write'`` (temporary file written), ``'fsync'``
        (temporary file fsync'd), ``'rename'`` (moved into place),
        ``'dirsync'`` (directory fsync'd) or ``'unlink'`` (file removed);
        ``path`` is the file or directory.  Does nothing; override it to
        count steps or to crash the process at a chosen one (crash tests).
        """

    # The low-level operations, run in the thread pool, are in
    # SpoolFilesMixin (_files.py).

    # -- helpers on the hub --------------------------------------------------------

    def _tmp_path(self, id_: str, suffix: str) -> str:
        return os.path.join(self.tmp_dir, f"{id_}{suffix}.{os.getpid()}-{next(self._tmp_serial)}{_TMP}")

    def _sync_dir(self, path: str) -> None:
        self._syncers[path].sync()

    @contextlib.contextmanager
    def _locked(self, id_: str) -> Iterator[None]:
        entry = self._locks.get(id_)
        if entry is None:
            entry = self._locks[id_] = (Semaphore(), [0])
        lock, users = entry
        users[0] += 1
        try:
            with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[id_]

    @staticmethod
    def _failure(action: str, exc: OSError) -> DiskStorageError:
        reply = _NO_SPACE if exc.errno in _SPACE_ERRNOS else _FAILED
        return DiskStorageError(f"{action} failed: {exc}", reply)

    def _bad_file(self, path: str, reason: str) -> None:
        try:
            dest = self._call(self._quarantine, path)
        except OSError as exc:
            _errors.error("damaged spool file %s (%s); quarantine failed: %s", path, reason, exc)
            return
        _errors.error("damaged spool file %s (%s): moved to %s", path, reason, dest)

    # -- QueueStorage ----------------------------------------------------------------

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Store a new envelope durably and return its id.

        Raises:
            DiskStorageError: The disk is full or failing (reply ``452
                4.3.1``), another I/O error (``451 4.3.0``), or a header
                cannot be serialised (``554 5.6.0``).
        """
        tmp = self._tmp_path(random_id(), _ENV)
        self._inflight.add(tmp)
        try:
            id_ = self._call(self._create_envelope, envelope, timestamp, tmp, not self.group_commit)
        except OSError as exc:
            raise self._failure("writing the envelope", exc) from exc
        except EnvelopeError as exc:
            raise DiskStorageError(f"envelope cannot be serialised: {exc}", _UNSTORABLE) from exc
        finally:
            self._inflight.discard(tmp)
        if self.group_commit:
            try:
                self._sync_dir(self.env_dir)
            except OSError as exc:
                self._call(self._take_back, os.path.join(self.env_dir, id_ + _ENV))
                raise self._failure("syncing the envelope directory", exc) from exc
        self._cache[id_] = StoredMeta(timestamp=timestamp, rcpt_count=len(envelope.recipients))
        _log.write(id_, envelope)
        return id_

    def _current_meta(self, id_: str) -> StoredMeta:
        meta = self._cache.get(id_)
        if meta is None:
            _, meta = self._read_entry(id_, need_envelope=False)
        return meta

    def _read_entry(self, id_: str, *, need_envelope: bool = True) -> tuple[Envelope | None, StoredMeta]:
        if not _ID.match(id_):
            raise KeyError(id_)
        cached = self._cache.get(id_)
        envelope, meta, env_problem, meta_problem = self._call(
            self._read_job, id_, need_envelope, cached is None
        )
        meta_path = os.path.join(self.meta_dir, id_ + _META)
        if env_problem is not None:
            self._cache.pop(id_, None)
            self._bad_file(os.path.join(self.env_dir, id_ + _ENV), env_problem)
            if self._call(os.path.lexists, meta_path):
                self._bad_file(meta_path, "its envelope was damaged")
            raise KeyError(id_)
        if meta_problem is not None:
            self._bad_file(meta_path, f"{meta_problem}; the envelope restarts from its initial metadata")
        if cached is not None:
            return envelope, cached
        self._cache[id_] = meta
        return envelope, meta

    def _update(self, id_: str, change: Callable[[StoredMeta], None]) -> StoredMeta:
        with self._locked(id_):
            meta = dataclasses.replace(self._current_meta(id_))
            change(meta)
            meta.has_file = True
            tmp = self._tmp_path(id_, _META)
            self._inflight.add(tmp)
            try:
                final = os.path.join(self.meta_dir, id_ + _META)
                data = _format.encode_meta(id_, meta)
                self._call(self._replace_meta, tmp, final, data, not self.group_commit)
                self._cache[id_] = meta
                if self.group_commit:
                    self._sync_dir(self.meta_dir)
            except OSError as exc:
                raise self._failure("updating metadata", exc) from exc
            finally:
                self._inflight.discard(tmp)
        return meta

    def set_timestamp(self, id: str, timestamp: float) -> None:  # noqa: A002 - 4.0 argument name
        """Change when the next attempt is due (an atomic, fsync'd rewrite)."""

        def change(meta: StoredMeta) -> None:
            meta.timestamp = timestamp

        self._update(id, change)
        _log.update_meta(id, timestamp=timestamp)

    def increment_attempts(self, id: str) -> int:  # noqa: A002 - 4.0 argument name
        """Count one more attempt and return the new count."""

        def change(meta: StoredMeta) -> None:
            meta.attempts += 1

        attempts = self._update(id, change).attempts
        _log.update_meta(id, attempts=attempts)
        return attempts

    def set_recipients_delivered(self, id: str, rcpt_indexes: Iterable[int]) -> None:  # noqa: A002 - 4.0 argument name
        """Record delivered recipients (indexes into what :meth:`get` returns now)."""
        indexes = sorted(set(rcpt_indexes))

        def change(meta: StoredMeta) -> None:
            remaining = [i for i in range(meta.rcpt_count) if i not in set(meta.delivered)]
            meta.delivered = tuple(sorted(set(meta.delivered) | {remaining[i] for i in indexes}))

        self._update(id, change)
        _log.update_meta(id, delivered_indexes=indexes)

    def set_last_error(self, id: str, error: str) -> None:  # noqa: A002 - matches the other methods
        """Remember why the last attempt failed (shown by :meth:`inspect`)."""

        def change(meta: StoredMeta) -> None:
            meta.last_error = error

        self._update(id, change)

    def get(self, id: str) -> tuple[Envelope, int]:  # noqa: A002 - 4.0 argument name
        """Return ``(envelope, attempts)``, delivered recipients left out.

        Raises:
            KeyError: Nothing (intact) is stored under ``id``; a damaged
                record is moved to the quarantine folder.
        """
        envelope, meta = self._read_entry(id)
        if envelope is None:  # not reached: the envelope was asked for
            raise KeyError(id)
        if meta.delivered:
            done = set(meta.delivered)
            envelope.recipients = [r for i, r in enumerate(envelope.recipients) if i not in done]
        return envelope, meta.attempts

    def remove(self, id: str) -> None:  # noqa: A002 - 4.0 argument name
        """Delete ``id`` (meta file first, then the envelope) and fsync."""
        if not _ID.match(id):
            return
        with self._locked(id):
            meta = self._cache.pop(id, None)
            try:
                if meta is None or meta.has_file:
                    # The meta file goes first (see _remove_files).
                    for directory in self._call(self._remove_files, id, True, False, not self.group_commit):
                        self._sync_dir(directory)
                for directory in self._call(self._remove_files, id, False, True, not self.group_commit):
                    self._sync_dir(directory)
            except OSError as exc:
                raise self._failure("removing", exc) from exc
        _log.remove(id)

    def load(self) -> list[tuple[float, str]]:
        """List ``(timestamp, id)`` for every intact envelope, soonest first.

        Leftover temporary files are deleted; damaged files are quarantined
        (see the module documentation).  Never raises for a bad file.
        """
        found, problems, cleaned = self._call(self._scan, frozenset(self._inflight))
        if cleaned:
            _errors.warning("removed %d unfinished temporary file(s) from %s", cleaned, self.tmp_dir)
        for path, reason in problems:
            self._bad_file(path, reason)
        if problems:
            for path in {self.env_dir, self.meta_dir, self.quarantine_dir}:
                self._call(self._fsync_dir, path)
        for id_, meta in found.items():
            self._cache.setdefault(id_, meta)
        return sorted((self._cache[id_].timestamp, id_) for id_ in found if id_ in self._cache)

    def get_info(self) -> dict[str, Any]:
        """Return ``size`` (envelopes), ``meta_size`` and ``quarantined`` file counts."""

        def count() -> dict[str, Any]:
            return {
                "size": len(self._ids(self.env_dir, _ENV)),
                "meta_size": len(self._ids(self.meta_dir, _META)),
                "quarantined": len(os.listdir(self.quarantine_dir)),
            }

        return self._call(count)

    def inspect(self) -> Iterator[QueueEntry]:
        """List every stored envelope with its metadata (read-only)."""
        for id_ in sorted(self._call(self._ids, self.env_dir, _ENV)):
            try:
                envelope, attempts = self.get(id_)
            except KeyError:
                continue
            meta = self._cache.get(id_)
            yield QueueEntry(
                id=id_,
                sender=envelope.sender,
                recipients=tuple(envelope.recipients),
                attempts=attempts,
                next_attempt=meta.timestamp if meta else None,
                last_error=meta.last_error if meta else None,
                state="deferred" if attempts else "queued",
            )
