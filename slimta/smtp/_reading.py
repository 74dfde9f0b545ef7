"""Reading for :class:`slimta.smtp.server.Server`: deadlines, timers, parking.

Theory of operation
-------------------
Every read of a session goes through :meth:`_Reading._recv`, which works out
the deadline that applies (a fresh ``command_timeout`` once a command has
been answered, the whole-message ``data_timeout`` and minimum data rate
while a message arrives, the session cap) and arms a timer for it.  Timers
are libev timers re-armed per read (:class:`_ReadTimer`), which throw
:class:`_ReadTimedOut` into the reading greenlet; a parked session waits
on a :class:`_Parked` pair of watchers instead of a greenlet.

This lives apart from :mod:`slimta.smtp.server` so that the driver there
reads as the session loop and the hook calls, and the timing rules can be
read in one place.  :class:`_Reading` is a mixin that
:class:`~slimta.smtp.server.Server` inherits: the methods run on the server
itself, with no call layer added on the hot path.  The annotations below
only tell the type checker which attributes of the server these methods
use; they create nothing at run time.
"""

from __future__ import annotations

import contextlib
import socket as _socket
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket

from slimta.smtp import ConnectionLost
from slimta.smtp.reply import TIMED_OUT

if TYPE_CHECKING:
    from collections.abc import Callable

    from slimta.smtp.io import IO
    from slimta.smtp.protocol import ServerConnection
    from slimta.smtp.server import Server


class _Reading:
    """Reads bounded by the session's deadlines, and the wait before parking."""

    io: IO
    command_timeout: float
    data_timeout: float
    session_timeout: float | None
    min_data_rate: float | None
    data_rate_grace: float
    greet_pause: float
    park_after: float
    _park_timer: _ReadTimer | None
    _command_timer: _ReadTimer
    _data_deadline: float | None
    _data_started: float
    _data_octets: int
    _command_deadline: float
    _deadline_events: int
    _events: int
    _started: float

    if TYPE_CHECKING:

        @property
        def encrypted(self) -> bool: ...

    def _recv_before_parking(self, conn: ServerConnection) -> bytes | None:
        """Wait :attr:`park_after` seconds in the greenlet; None: park now.

        Parking costs a greenlet per wake-up, so only a session that stays
        idle for a while is parked: an active client's next command usually
        arrives within milliseconds.
        """
        if self.park_after <= 0:
            return None
        timeout, _ = self._read_timeout(conn)
        if timeout <= self.park_after:
            return self._recv(conn)
        timer = self._park_timer
        if timer is None:
            timer = self._park_timer = _ReadTimer(self.park_after)
        timer.arm()
        try:
            return self.io.recv()
        except _ReadTimedOut as exc:
            if exc is not timer.expired:
                raise
            # The reused exception would otherwise keep this greenlet's
            # frames alive, through its traceback, while the session parks.
            exc.__traceback__ = None
            return None
        except TimeoutError:
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client") from None
        finally:
            timer.disarm()

    def _parkable(self) -> bool:
        # Decrypted TLS data may wait inside the SSL object with nothing
        # left to read on the socket: only an empty SSL buffer can park.
        return not self.io.encrypted or not self.io.socket.pending()

    def _read_timeout(self, conn: ServerConnection) -> tuple[float, bool]:
        """Seconds left for the read about to start, and whether they are fresh.

        Fresh means a new, uncapped command deadline, served by the shared
        timer of the session.
        """
        now = time.monotonic()
        fresh = False
        if conn.in_data:
            # Fix: data_timeout bounds the whole of a message's data, as
            # documented, not each read: a client trickling one octet per
            # read used to keep the session alive for ever (slowloris).
            if self._data_deadline is None:
                self._data_deadline = now + self.data_timeout
                self._data_started = now
                self._data_octets = 0
            deadline = self._data_deadline
            rate = self.min_data_rate
            if rate:
                # Postfix's smtpd_min_data_rate: every octet received buys
                # 1/rate seconds more, after a grace period.
                earned = self._data_started + self.data_rate_grace + self._data_octets / rate
                deadline = min(deadline, earned)
        else:
            if self._deadline_events != self._events:
                # A command was answered since the deadline was set: the next
                # one gets a fresh command_timeout.  Partial lines do not
                # renew it (one octet every few seconds is a slowloris).
                self._deadline_events = self._events
                self._command_deadline = now + self.command_timeout
                fresh = True
            deadline = self._command_deadline
        if self.session_timeout is not None:
            end = self._started + self.session_timeout
            if end < deadline:
                deadline, fresh = end, False
        return (self.command_timeout if fresh else deadline - now), fresh

    def _check_early_talker(self) -> bool:
        """True if the client sent something before our banner."""
        sock = self.io.socket
        if self.greet_pause > 0:
            with contextlib.suppress(OSError):
                gevent.socket.wait_read(sock.fileno(), self.greet_pause)
        if self.encrypted:
            return bool(sock.pending())
        previous = sock.gettimeout()
        try:
            sock.settimeout(0)
            return bool(sock.recv(1, _socket.MSG_PEEK))
        except OSError:
            return False
        finally:
            sock.settimeout(previous)

    def _recv(self, conn: ServerConnection) -> bytes:
        timeout, fresh = self._read_timeout(conn)
        if timeout <= 0:
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client")
        # One re-armed timer serves every fresh command deadline of the
        # session (a new Timeout object per read was a measurable share of a
        # small message's CPU); other reads use their remaining time.
        timer = self._command_timer if fresh else _ReadTimer(timeout)
        timer.arm()
        try:
            data = self.io.recv()
        except _ReadTimedOut as exc:
            if exc is not timer.expired:
                raise
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client") from None
        except TimeoutError:
            # A timeout the caller set on the socket itself.
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client") from None
        finally:
            timer.disarm()
            if timer is not self._command_timer:
                timer.close()
        if conn.in_data:
            self._data_octets += len(data)
        return data

    def _send_timeout(self) -> None:
        with contextlib.suppress(ConnectionLost):
            self.io.send(TIMED_OUT.to_bytes())


class _ReadTimedOut(BaseException):
    """Thrown into a session blocked in a read past its deadline.

    A BaseException, like :class:`gevent.Timeout`, so that no handler's
    ``except Exception`` can swallow it.
    """


class _ReadTimer:
    """A timer re-armed for each read of one session, then closed.

    Restarting one libev timer costs a fraction of creating a
    :class:`gevent.Timeout` per read.
    """

    __slots__ = ("expired", "timer")

    def __init__(self, seconds: float) -> None:
        self.timer = gevent.get_hub().loop.timer(seconds, seconds)
        self.expired = _ReadTimedOut(f"read timed out after {seconds} s")

    def arm(self) -> None:
        self.timer.again(gevent.getcurrent().throw, self.expired, update=True)

    def disarm(self) -> None:
        self.timer.stop()

    def close(self) -> None:
        self.timer.close()


class _Parked:
    """A parked session's two watchers; the first to fire wakes the session."""

    __slots__ = ("server", "timer", "wake", "watcher")

    def __init__(
        self, server: Server, watcher: Any, timer: Any, wake: Callable[[Server, bool], None]
    ) -> None:
        self.server = server
        self.watcher = watcher
        self.timer = timer
        self.wake = wake

    def fire(self, timed_out: bool) -> None:
        self.watcher.stop()
        self.watcher.close()
        self.timer.stop()
        if self.timer is not self.server._command_timer.timer:
            self.timer.close()
        self.wake(self.server, timed_out)

    def cancel(self) -> None:
        """Stop watching without waking (the edge is shutting down)."""
        self.watcher.stop()
        self.watcher.close()
        self.timer.stop()
