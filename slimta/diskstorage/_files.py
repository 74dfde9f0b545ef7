"""The file steps of :class:`~slimta.diskstorage.DiskStorage`, run in worker threads.

Everything here touches the file system and runs in gevent's thread pool
(see "Theory of operation" in :mod:`slimta.diskstorage`): a slow disk then
delays only the greenlet waiting for it.  :class:`SpoolFilesMixin` holds

* :meth:`~SpoolFilesMixin._call`, the one way onto the thread pool (errors
  come back as values, then are raised on the hub);
* the durable write: temporary file, ``write_data``, ``fsync``, rename
  into place, directory ``fsync``, with a ``checkpoint`` after each step
  (the crash tests stop the process there), and taking a file back when
  the directory fsync fails;
* unlinking in the safe order (meta file first), reading a record,
  moving a damaged file to the quarantine folder;
* the jobs that read and check records in one trip to the pool: one
  entry (``_read_job``) and the start-up scan of the whole spool
  (``_scan``, which also deletes temporary files a crash left behind).

The record format itself (encoding, decoding, the CRC) is in
:mod:`slimta.diskstorage._format`, which does no I/O.  What stays in
:mod:`slimta.diskstorage` runs on the hub: the metadata cache, per-id
locks, group commit of directory fsyncs, error replies and logging.
:class:`~slimta.diskstorage.DiskStorage` inherits these methods, so no
call pays for the split.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import gevent

from slimta.diskstorage import _format
from slimta.diskstorage._format import RecordError, StoredMeta
from slimta.util._ids import random_id

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["SpoolFilesMixin"]

_T = TypeVar("_T")

_ID = re.compile(r"[0-9a-f]{32}\Z")
_ENV, _META, _TMP = ".env", ".meta", ".tmp"


def _capture(func: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, func(*args)
    except Exception as exc:  # noqa: BLE001 - re-raised by DiskStorage._call
        return False, exc


class SpoolFilesMixin:
    """File system steps for :class:`~slimta.diskstorage.DiskStorage`."""

    env_dir: str
    meta_dir: str
    tmp_dir: str
    quarantine_dir: str
    _cache: dict[str, StoredMeta]

    if TYPE_CHECKING:

        def write_data(self, fd: int, data: bytes) -> None: ...

        def checkpoint(self, step: str, path: str) -> None: ...

    # -- low-level operations (run in the thread pool) ----------------------------

    def _call(self, func: Callable[..., _T], *args: Any) -> _T:
        # Errors come back as values: gevent's thread pool would print the
        # traceback of an exception raised in a worker (a KeyError for an
        # unknown id, ENOSPC on a full disk) before passing it on.
        ok, value = gevent.get_hub().threadpool.apply(_capture, (func, args))
        if ok:
            result: _T = value
            return result
        raise value

    def _fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.checkpoint("dirsync", path)

    def _put_file(self, tmp: str, final: str, data: bytes) -> None:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                self.write_data(fd, data)
                self.checkpoint("write", tmp)
                os.fsync(fd)
                self.checkpoint("fsync", tmp)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.checkpoint("rename", final)

    def _create_envelope(self, envelope: Envelope, timestamp: float, tmp_id: str, sync: bool) -> str:
        while True:
            id_ = random_id()
            final = os.path.join(self.env_dir, id_ + _ENV)
            if not os.path.lexists(final):
                break
        data = _format.encode_envelope(id_, envelope, timestamp)
        self._put_file(tmp_id, final, data)
        if sync:
            try:
                self._fsync_dir(self.env_dir)
            except OSError:
                self._take_back(final)
                raise
        return id_

    def _take_back(self, path: str) -> None:
        # The directory fsync failed, so the client is not told 250 and will
        # send again: take the file back rather than risk a duplicate.
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _replace_meta(self, tmp: str, final: str, data: bytes, sync: bool) -> None:
        self._put_file(tmp, final, data)
        if sync:
            self._fsync_dir(self.meta_dir)

    def _remove_files(self, id_: str, meta_file: bool, env_file: bool, sync: bool) -> list[str]:
        # The meta file goes first: a crash in between leaves an envelope
        # that is delivered again, never a meta file without its envelope.
        dirty = []
        for directory, path, maybe in (
            (self.meta_dir, os.path.join(self.meta_dir, id_ + _META), meta_file),
            (self.env_dir, os.path.join(self.env_dir, id_ + _ENV), env_file),
        ):
            if maybe and self._unlink(path):
                if sync:
                    self._fsync_dir(directory)
                else:
                    dirty.append(directory)
        return dirty

    def _unlink(self, path: str) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        self.checkpoint("unlink", path)
        return True

    def _read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def _quarantine(self, path: str) -> str:
        base = os.path.join(self.quarantine_dir, os.path.basename(path))
        dest = base
        for n in itertools.count(1):
            if not os.path.lexists(dest):
                break
            dest = f"{base}.{n}"
        try:
            os.rename(path, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(path, dest)  # quarantine_dir on another filesystem
        return dest

    # -- jobs that read and check records -------------------------------------------

    def _read_job(
        self, id_: str, need_envelope: bool, read_meta: bool
    ) -> tuple[Envelope | None, StoredMeta, str | None, str | None]:
        # One trip to the thread pool: read and check the envelope and, if
        # asked, the meta file.  Returns (envelope, meta, envelope problem,
        # meta problem); the caller quarantines on the hub.
        raw = self._read(os.path.join(self.env_dir, id_ + _ENV))
        if raw is None:
            raise KeyError(id_)
        envelope: Envelope | None = None
        try:
            if need_envelope:
                envelope, meta = _format.decode_envelope(raw, id_)
            else:
                meta = _format.envelope_meta(raw, id_)
        except RecordError as exc:
            return None, StoredMeta(0.0), str(exc), None
        meta_raw = self._read(os.path.join(self.meta_dir, id_ + _META)) if read_meta else None
        if meta_raw is not None:
            try:
                meta = _format.decode_meta(meta_raw, id_)
            except RecordError as exc:
                return envelope, meta, None, str(exc)
        return envelope, meta, None, None

    def _ids(self, path: str, suffix: str) -> set[str]:
        return {name[: -len(suffix)] for name in os.listdir(path) if name.endswith(suffix)}

    def _scan(self, inflight: frozenset[str]) -> tuple[dict[str, StoredMeta], list[tuple[str, str]], int]:
        cleaned = 0
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            if name.endswith(_TMP) and path not in inflight and self._unlink(path):
                cleaned += 1
        env_ids = self._ids(self.env_dir, _ENV)
        meta_ids = self._ids(self.meta_dir, _META)
        found: dict[str, StoredMeta] = {}
        problems = [
            (os.path.join(self.meta_dir, id_ + _META), "meta file without an envelope")
            for id_ in sorted(meta_ids - env_ids)
        ]
        for id_ in sorted(env_ids):
            env_path = os.path.join(self.env_dir, id_ + _ENV)
            meta_path = os.path.join(self.meta_dir, id_ + _META)
            cached = self._cache.get(id_)
            if cached is not None:
                found[id_] = cached
                continue
            try:
                raw = self._read(env_path)
                if raw is None:
                    continue  # removed meanwhile
                if not _ID.match(id_):
                    raise RecordError("file name is not a spool id")
                meta = _format.envelope_meta(raw, id_)
            except RecordError as exc:
                problems.append((env_path, str(exc)))
                if id_ in meta_ids:
                    problems.append((meta_path, "its envelope was damaged"))
                continue
            if id_ in meta_ids:
                meta_raw = self._read(meta_path)
                try:
                    if meta_raw is not None:
                        meta = _format.decode_meta(meta_raw, id_)
                except RecordError as exc:
                    problems.append((meta_path, f"{exc}; the envelope restarts from its initial metadata"))
            found[id_] = meta
        return found, problems, cleaned
