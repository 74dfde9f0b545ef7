"""Helpers for running a mail server as a long-lived system daemon.

A typical start-up sequence, run as root so that port 25 can be bound::

    listeners = create_listeners(('', 25))      # needs root
    context = ssl.create_default_context(...)   # read keys while still root
    daemonize()
    redirect_stdio(stdout='/var/log/mta.out', stderr='/var/log/mta.err')
    drop_privileges('mail', 'mail')
    with PidFile('/run/mta/mta.pid'):
        serve_forever()

Failures raise subclasses of :class:`~slimta.core.SlimtaError` that name the
user, group or file involved.  Those caused by an operating-system call are
also :class:`OSError` (with its ``errno``), and unknown users and groups are
also :class:`KeyError`, which is what python-slimta let through, so existing
``except`` clauses keep working.

These functions are POSIX-only.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import sys
from types import TracebackType

from gevent.os import fork_gevent

from slimta.core import SlimtaError

__all__ = [
    "DaemonizeError",
    "PidFile",
    "PidFileError",
    "PrivilegeError",
    "RedirectStdioError",
    "UnknownGroupError",
    "UnknownUserError",
    "daemonize",
    "drop_privileges",
    "redirect_stdio",
]


class DaemonizeError(SlimtaError, OSError):
    """:func:`daemonize` could not fork or start a new session."""


class RedirectStdioError(SlimtaError, OSError):
    """:func:`redirect_stdio` could not open one of the given files."""


class PrivilegeError(SlimtaError, OSError):
    """:func:`drop_privileges` could not switch to the requested ids."""


class UnknownUserError(PrivilegeError, KeyError):
    """The user given to :func:`drop_privileges` does not exist."""

    def __str__(self) -> str:
        # KeyError would print repr() of the message with extra quotes.
        return str(self.args[0]) if self.args else ""


class UnknownGroupError(PrivilegeError, KeyError):
    """The group given to :func:`drop_privileges` does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PidFileError(SlimtaError, OSError):
    """A :class:`PidFile` could not be written."""


# Output streams append, so several processes (or a log rotated by copy and
# truncate) never overwrite each other's lines.
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def daemonize() -> int:
    """Detach the current process from its terminal with the double fork.

    The calling process and the intermediate child exit at once (status 0);
    only the grandchild returns.  It runs in a new session with no
    controlling terminal, its working directory is ``/`` (so it does not
    keep a mount point busy) and its umask is ``022``.  Standard input,
    output and error are left alone; see :func:`redirect_stdio`.

    The gevent hub is re-initialised in each child, so greenlets and
    sockets created before the call keep working.  Create listening sockets
    and load TLS keys *before* daemonizing and dropping privileges.

    Returns:
        The process id of the daemon (the grandchild).

    Raises:
        DaemonizeError: A fork or ``setsid()`` failed.
    """
    _fork_and_exit_parent()
    try:
        # A new session without a controlling terminal: the shell's hang-up
        # and job-control signals no longer reach us.
        os.setsid()
    except OSError as exc:
        raise DaemonizeError(exc.errno, f"daemonize: setsid() failed: {exc.strerror}") from exc
    # The second fork leaves a process that is not a session leader, so it
    # can never acquire a controlling terminal by opening a tty.
    _fork_and_exit_parent()
    os.chdir("/")
    # Not umask(0): with it, files the daemon creates (pid file, logs, queue
    # files) would be world-writable unless every caller passed a mode.
    os.umask(0o022)
    return os.getpid()


def _fork_and_exit_parent() -> None:
    # Anything still buffered would otherwise be written twice, once by each
    # process after the fork.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        pid = fork_gevent()
    except OSError as exc:
        raise DaemonizeError(exc.errno, f"daemonize: fork() failed: {exc.strerror}") from exc
    if pid > 0:
        # _exit, not exit: the parent must not run atexit handlers or flush
        # stdio buffers that now belong to the child too.
        os._exit(0)


def redirect_stdio(stdout: str | None = None, stderr: str | None = None, stdin: str | None = None) -> None:
    """Point the process's standard streams at files.

    Output files are opened for appending (and created if missing); the
    input file is opened read-only.  A stream given as ``None`` is pointed at
    :data:`os.devnull`, which is what a daemon wants: writes to the terminal
    it left behind would fail or block.

    The redirection happens at the file-descriptor level (``dup2`` onto 0, 1
    and 2), so it also covers output of C extensions and child processes.

    Args:
        stdout: File to append standard output to.
        stderr: File to append standard error to.
        stdin: File to read standard input from.

    Raises:
        RedirectStdioError: A file could not be opened; nothing has been
            redirected yet when this is raised.
    """
    # Open all three before touching any descriptor, so that a bad path
    # leaves the process's stdio intact for the error message.
    targets = ((stdin, os.O_RDONLY, 0), (stdout, _APPEND, 1), (stderr, _APPEND, 2))
    opened: list[tuple[int, int]] = []
    try:
        for path, flags, target_fd in targets:
            name = path if path is not None else os.devnull
            try:
                opened.append((os.open(name, flags, 0o644), target_fd))
            except OSError as exc:
                raise RedirectStdioError(
                    exc.errno,
                    f"cannot open {name!r} for fd {target_fd}: {exc.strerror}",
                ) from exc
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for fd, target_fd in opened:
            os.dup2(fd, target_fd)
    finally:
        for fd, _ in opened:
            os.close(fd)


def drop_privileges(user: str | int | None = None, group: str | int | None = None) -> None:
    """Switch the process to an unprivileged user and group.

    Call it after binding privileged ports and reading private keys.  Names
    and numeric ids (``int`` or a digit string) are both accepted.

    The group is switched before the user (afterwards it would no longer be
    allowed).  When *user* is given without *group*, the user's primary
    group from the password database is used, so the process does not keep
    root's group.  When running as root, the supplementary groups are
    replaced by those of *user* (or by just *group* when no user is given),
    so none of root's groups survive either.

    Args:
        user: User name or uid to become; ``None`` keeps the current user.
        group: Group name or gid to become; ``None`` means the user's primary
            group, or no change when *user* is ``None`` too.

    Raises:
        UnknownUserError: *user* is not in the password database (a numeric
            uid without an entry is accepted only together with *group*).
        UnknownGroupError: *group* is not in the group database.
        PrivilegeError: The switch itself was refused, typically because the
            process is not root.
    """
    uid, user_name, primary_gid = _resolve_user(user, need_gid=group is None)
    gid = _resolve_group(group) if group is not None else primary_gid
    try:
        if os.geteuid() == 0 and (uid is not None or gid is not None):
            if user_name is not None and gid is not None:
                os.initgroups(user_name, gid)
            elif gid is not None:
                os.setgroups([gid])
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
    except OSError as exc:
        raise PrivilegeError(
            exc.errno,
            f"cannot switch to user {user!r}, group {group!r}: {exc.strerror}",
        ) from exc


def _resolve_user(user: str | int | None, *, need_gid: bool) -> tuple[int | None, str | None, int | None]:
    """Return ``(uid, name, primary_gid)`` for *user*; all ``None`` for ``None``."""
    if user is None:
        return None, None, None
    numeric = _as_id(user)
    try:
        entry = pwd.getpwuid(numeric) if numeric is not None else pwd.getpwnam(str(user))
    except KeyError:
        if numeric is not None and not need_gid:
            # A bare uid with no passwd entry (common in containers) is fine
            # as long as the caller also said which group to use.
            return numeric, None, None
        raise UnknownUserError(
            f"unknown user {user!r}"
            + (" (give group= as well for a uid without a passwd entry)" if numeric is not None else "")
        ) from None
    return entry.pw_uid, entry.pw_name, entry.pw_gid


def _resolve_group(group: str | int) -> int:
    numeric = _as_id(group)
    if numeric is not None:
        # A gid needs no group entry: setgid() accepts any number.
        return numeric
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise UnknownGroupError(f"unknown group {group!r}") from None


def _as_id(value: object) -> int | None:
    """Return *value* as a numeric id, or ``None`` if it is a name."""
    if isinstance(value, int):
        if isinstance(value, bool) or value < 0:
            raise PrivilegeError(f"invalid user or group id {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise PrivilegeError(f"user and group must be a name or a number, not {value!r}")
    if value.isascii() and value.isdigit():
        return int(value)
    return None


class PidFile:
    """Context manager that keeps a pid file while its block runs.

    On entry the file is written with the current process id and a newline;
    on exit it is removed.  Use it *after* :func:`daemonize`, so that the
    daemon's pid is the one recorded.

    A process forked inside the block (a worker, say) that leaves the block
    too does not remove the file: it is only removed by the process whose pid
    it holds.

    Args:
        filename: Path of the pid file.  It is made absolute at once, so a
            later ``chdir`` (as :func:`daemonize` does) does not move it.
            ``None`` or ``''`` makes the context manager do nothing.

    Attributes:
        filename: The absolute path, or ``None``.
    """

    def __init__(self, filename: str | None = None) -> None:
        self.filename: str | None = os.path.abspath(filename) if filename else None
        self._pid: int | None = None

    def __enter__(self) -> str | None:
        """Write the pid file.

        Returns:
            The absolute file name, or ``None`` when there is no file.

        Raises:
            PidFileError: The file could not be written; the block does not
                run.
        """
        if self.filename is None:
            return None
        pid = os.getpid()
        try:
            fd = os.open(self.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{pid}\n".encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:
            raise PidFileError(exc.errno, f"cannot write pid file {self.filename!r}: {exc.strerror}") from exc
        self._pid = pid
        return self.filename

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Remove the pid file, if this process wrote it."""
        if self.filename is None or self._pid != os.getpid():
            return
        self._pid = None
        # Already gone (an admin's cleanup) is fine: nothing left to do.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.filename)
