"""Local delivery into Maildir folders.

:class:`MaildirRelay` writes each recipient's copy of a message into a
Maildir (the format of qmail, Dovecot, Courier, mutt...), with no external
program.  The ``slimta`` command's default configuration delivers local
mail with it.

Theory of operation
-------------------

A Maildir is a directory with three subdirectories, ``tmp``, ``new`` and
``cur``.  A message becomes visible to readers only when it appears in
``new``, and it appears there whole, so no reader ever sees half a message
and no lock is needed:

1. the message is written to ``tmp/<unique name>``, created with
   ``O_EXCL`` so an existing file is never overwritten;
2. the file is ``fsync``'d, so its data is on disk;
3. it is hard-linked as ``new/<unique name>`` (renamed where the file system
   has no hard links) and the ``tmp`` name removed;
4. the ``new`` directory is ``fsync``'d, so the new name survives a crash.

Only after step 4 is the recipient reported delivered, so mail the queue
considers delivered is on disk.  Unique names follow the Maildir
convention ``<seconds>.<unique>.<host name>``, where the middle part joins
the microseconds, the process id, a per-process counter and random bits:
unique across processes, across threads and across clock changes.

The file system work (``mkdir``, writes, ``fsync``) runs in gevent's thread
pool, so a slow disk does not hold up other greenlets.

Each copy starts with a ``Return-Path`` (the envelope sender) and a
``Delivered-To`` (the recipient) header.  They are added to that copy's
bytes only; the envelope itself, shared with other recipients and relays, is
not changed.  Files are written with LF line endings, as the Maildir format
expects.

Recipients and folders
----------------------

By default each recipient gets the Maildir ``<base_dir>/<local part>``, the
local part lower-cased (``Alice@example.com`` -> ``<base_dir>/alice``; the
domain is not used).  A local part that could leave ``base_dir`` or name a
hidden or odd file -- empty, starting with ``.``, holding ``/``, ``\\``, a
NUL or another control character, or longer than 200 characters -- is
refused with ``550 5.1.3``.  Pass ``folder_for`` to map recipients another
way.

Errors
------

====================================  ==================================
problem                               outcome for that recipient
====================================  ==================================
bad mailbox name                      ``550 5.1.3`` (bounced)
no folder (``folder_for`` -> None)    ``550 5.1.1`` (bounced)
folder missing, ``create=False``      ``550 5.1.1`` (bounced)
disk full (``ENOSPC``)                ``450 4.3.1`` (retried)
over quota (``EDQUOT``)               ``450 4.2.2`` (retried)
any other ``OSError``                 ``450 4.3.0`` (retried)
====================================  ==================================

.. versionadded:: 0.1.0
   Not part of python-slimta.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent

from slimta.envelope import EnvelopeError
from slimta.relay import PermanentRelayError, Relay, RelayError, TransientRelayError
from slimta.smtp.reply import Reply
from slimta.util._groupsync import GroupFsync
from slimta.util._ids import random_id

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["MaildirRelay", "default_folder_for"]

#: What a ``folder_for`` callable returns: a Maildir path, or ``None`` when
#: the recipient has no mailbox here.
FolderFor = Callable[[str], "str | os.PathLike[str] | None"]

_SUBDIRS = ("tmp", "new", "cur")
# Control characters, path separators: nothing a mailbox name needs, and
# each could escape base_dir or confuse a tool that lists the folder.
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")
_MAX_NAME = 200
# In an address written into a header, a line break would start a header
# of its own.
_BAD_HEADER_VALUE = re.compile(r"[\x00\r\n]")
_counter = itertools.count()


def default_folder_for(base_dir: str | os.PathLike[str], recipient: str) -> str:
    """Return ``<base_dir>/<local part of recipient, lower-cased>``.

    Args:
        base_dir: The directory that holds one Maildir per user.
        recipient: The envelope recipient.

    Returns:
        The path of the recipient's Maildir.

    Raises:
        PermanentRelayError: ``550 5.1.3`` when the local part is not a safe
            directory name (empty, starts with ``.``, holds ``/``, ``\\``, a
            NUL or another control character, or is too long).
    """
    local = recipient.rpartition("@")[0] if "@" in recipient else recipient
    local = local.lower()
    if not local or local.startswith(".") or len(local) > _MAX_NAME or _BAD_NAME.search(local):
        msg = f"Mailbox name {local!r} is not allowed"
        raise PermanentRelayError(msg, Reply("550", f"5.1.3 {msg}"))
    return os.path.join(os.fspath(base_dir), local)


def _unique_name() -> str:
    now = time.time()
    seconds = int(now)
    micros = int((now - seconds) * 1_000_000)
    # With the pid and the counter, about 60 random bits (from the fork-safe id
    # generator: no getrandom() per message) keep names unique across hosts
    # sharing the Maildir and across pid reuse.
    return f"{seconds}.M{micros}P{_pid}Q{next(_counter)}R{random_id()[:16]}.{_host_part()}"


# The pid, read once per process (getpid() is a system call each time on
# current glibc); a forked child reads its own.
_pid = os.getpid()


def _read_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_read_pid)


@functools.lru_cache(maxsize=1)
def _host_part() -> str:
    # The Maildir convention replaces "/" and ":" in the host name, which
    # would otherwise make a path or start the info part.
    return _hostname().replace("/", r"\057").replace(":", r"\072")


def _hostname() -> str:
    return socket.gethostname() or "localhost"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_maildir(folder: str) -> None:
    """Create ``folder`` and its tmp/new/cur subdirectories if missing."""
    created = not os.path.isdir(folder)
    for sub in _SUBDIRS:
        os.makedirs(os.path.join(folder, sub), mode=0o700, exist_ok=True)
    if created:
        # Make the new folder's own directory entry durable too.
        _fsync_dir(os.path.dirname(os.path.abspath(folder)))


def _store(folder: str, data: bytes, create: bool, known: bool = False) -> str:
    """Deliver ``data`` into the Maildir ``folder``; runs in a thread.

    ``known`` says the folder was seen complete before: its checks are
    skipped, and done after all if ``tmp/`` turns out to be missing.

    Returns:
        The file name in ``new/``, or ``""`` when the folder does not exist
        and ``create`` is false.
    """
    if known:
        try:
            return _store_file(folder, data)
        except FileNotFoundError:
            pass  # removed since: check (and create) it as for a new folder
    if create:
        _make_maildir(folder)
    elif not all(os.path.isdir(os.path.join(folder, sub)) for sub in _SUBDIRS):
        return ""
    return _store_file(folder, data)


def _store_file(folder: str, data: bytes) -> str:
    name = _unique_name()
    tmp_path = os.path.join(folder, "tmp", name)
    new_path = os.path.join(folder, "new", name)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp_path, new_path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise
            # No hard links here (some network and FUSE file systems): a
            # rename is atomic too, and the name is unique, so nothing is
            # overwritten.
            os.rename(tmp_path, new_path)
    except BaseException:
        _unlink_quietly(tmp_path)
        raise
    _unlink_quietly(tmp_path)
    # The caller makes new/ durable with a (group-committed) fsync.
    return name


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _os_error(exc: OSError, folder: str) -> TransientRelayError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        esc = "4.3.1"
    elif exc.errno == errno.EDQUOT:
        esc = "4.2.2"
    else:
        esc = "4.3.0"
    msg = f"Cannot deliver into {folder}: {reason}"
    return TransientRelayError(msg, Reply("450", f"{esc} {msg}"))


def _address_header(name: str, address: str, esc: str) -> bytes:
    if _BAD_HEADER_VALUE.search(address):
        msg = f"The address {address!r} cannot be written into a {name} header"
        raise PermanentRelayError(msg, Reply("550", f"{esc} {msg}"))
    return f"{name}: <{address}>\n".encode("utf-8", "surrogateescape")


class MaildirRelay(Relay):
    """Deliver each recipient's copy into a Maildir folder.

    Args:
        base_dir: The directory holding one Maildir per user, used by the
            default mapping (and to resolve relative paths ``folder_for``
            returns).
        folder_for: A callable from recipient address to the path of its
            Maildir, or ``None`` when the recipient has no mailbox here
            (``550 5.1.1``).  It may raise a
            :class:`~slimta.relay.RelayError` to fail that recipient.  The
            default is :func:`default_folder_for` with ``base_dir``.
        create: Create the folder and its ``tmp``/``new``/``cur``
            subdirectories when missing (mode ``0700``).  When false, a
            missing folder means an unknown user (``550 5.1.1``).

    Attributes:
        base_dir: The base directory, as a string.
        folder_for: The recipient mapping in use.
        create: Whether missing folders are created.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        folder_for: FolderFor | None = None,
        create: bool = True,
    ) -> None:
        super().__init__()
        self.base_dir = os.fspath(base_dir)
        self.folder_for: FolderFor = folder_for or self._default_folder_for
        self.create = create
        self._syncers: dict[str, GroupFsync] = {}
        # Folders a delivery found complete: later deliveries skip the
        # mkdir/stat calls (bounded like the syncers).
        self._known: set[str] = set()

    def _default_folder_for(self, recipient: str) -> str:
        return default_folder_for(self.base_dir, recipient)

    def _folder(self, recipient: str) -> str:
        folder = self.folder_for(recipient)
        if folder is None:
            msg = f"No mailbox here for {recipient!r}"
            raise PermanentRelayError(msg, Reply("550", f"5.1.1 {msg}"))
        return os.path.join(self.base_dir, os.fspath(folder))

    def _deliver(self, recipient: str, return_path: bytes, message: bytes) -> Reply:
        folder = self._folder(recipient)
        data = return_path + _address_header("Delivered-To", recipient, "5.1.3") + message
        pool = gevent.get_hub().threadpool
        known = self._known
        try:
            name = pool.apply(_store, (folder, data, self.create, folder in known))
            if name:
                if len(known) >= 1024:
                    known.clear()
                known.add(folder)
                self._new_dir_sync(folder).sync()
            else:
                known.discard(folder)
        except OSError as exc:
            raise _os_error(exc, folder) from exc
        if not name:
            msg = f"No mailbox here for {recipient!r}"
            raise PermanentRelayError(msg, Reply("550", f"5.1.1 {msg}"))
        return Reply("250", f"2.0.0 Delivered as {name}")

    def _new_dir_sync(self, folder: str) -> GroupFsync:
        # One group commit per mailbox: concurrent deliveries into the same
        # new/ share a directory fsync.  Bounded: idle entries are dropped.
        syncers = self._syncers
        syncer = syncers.get(folder)
        if syncer is None:
            if len(syncers) >= 1024:
                syncers.clear()
            new_dir = os.path.join(folder, "new")
            syncer = syncers[folder] = GroupFsync(
                functools.partial(gevent.get_hub().threadpool.apply, _fsync_dir, (new_dir,))
            )
        return syncer

    def attempt(self, envelope: Envelope, attempts: int) -> dict[str, Reply | RelayError]:
        """Write one copy of ``envelope`` per recipient.

        Args:
            envelope: The envelope to deliver.  It is not changed.
            attempts: Ignored.

        Returns:
            For each recipient, a ``250 2.0.0`` :class:`Reply` naming the
            new file, or the :class:`~slimta.relay.RelayError` that failed
            it (see the table in the module documentation).

        Raises:
            PermanentRelayError: The message cannot be written out (a bad
                header), or the sender cannot go into ``Return-Path``.
        """
        try:
            header_data, body_data = envelope.flatten()
        except EnvelopeError as exc:
            msg = f"The message cannot be written out: {exc}"
            raise PermanentRelayError(msg, Reply("550", f"5.6.0 {msg}")) from exc
        # flatten() ends every line with CRLF; Maildir files use LF.
        message = (header_data + body_data).replace(b"\r\n", b"\n")
        return_path = _address_header("Return-Path", envelope.sender or "", "5.1.7")
        results: dict[str, Reply | RelayError] = {}
        for rcpt in dict.fromkeys(envelope.recipients):
            try:
                results[rcpt] = self._deliver(rcpt, return_path, message)
            except RelayError as exc:
                results[rcpt] = exc
        return results
