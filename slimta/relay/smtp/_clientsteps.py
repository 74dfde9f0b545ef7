"""The step machinery of :class:`~slimta.relay.smtp.client.SmtpRelayClient`.

Every exchange with the server is a *step* (``[CONNECT]``, ``EHLO``,
``MAIL``, ``[SEND_DATA]``...): it runs under a deadline and whatever goes
wrong inside it (a timeout, an unparsable reply, a dropped connection)
leaves it as a :class:`~slimta.relay.smtp.SmtpTransientRelayError` naming
the step.  This module holds that machinery, apart from the SMTP dialogue
in :mod:`slimta.relay.smtp.client` that uses it:

* the local failures (errors with no server reply behind them), which tell
  the client whether the session is still usable and whether a failed
  delivery on a reused connection may be tried again;
* :class:`StepsMixin`, the methods :class:`SmtpRelayClient` inherits to
  make replies and errors, open steps and arm their timers;
* :class:`_Step` and :class:`_StaleGuard`, the context managers.

Every delivery goes through several steps, so the context managers are
small ``__slots__`` classes rather than ``contextlib`` generators, and the
deadlines are libev timers re-armed per step rather than a new
:class:`gevent.Timeout` each time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent

from slimta.relay.smtp import SmtpTransientRelayError
from slimta.smtp import BadReply, SmtpError
from slimta.smtp.client import TlsHandshakeFailed
from slimta.smtp.reply import Reply

__all__ = ["StepsMixin"]


class _LocalFailure(SmtpTransientRelayError):
    """A failure with no server reply behind it (timeout, lost connection...)."""


class _ConnectionDropped(_LocalFailure):
    """The connection broke or was closed by the server."""


class _StaleConnection(_ConnectionDropped):
    """The connection died before the server answered MAIL: safe to retry."""


class StepsMixin:
    """Replies, errors and step deadlines for :class:`SmtpRelayClient`."""

    address: tuple[str, int]
    _timers: dict[float, tuple[Any, _StepTimedOut]]

    def _reply(self, code: str, message: str, command: str) -> Reply:
        return Reply(code, message, command=command, address=self.address)

    def _transient(
        self, message: str, command: str, kind: type[_LocalFailure] = _LocalFailure
    ) -> SmtpTransientRelayError:
        return kind(self._reply("451", message, command))

    def _step(self, step: str | Callable[[], str], seconds: float | None) -> _Step:
        """Bound one exchange by ``seconds`` and turn failures into relay errors."""
        return _Step(self, step, seconds)

    def _step_failure(self, step: str | Callable[[], str], exc: BaseException) -> BaseException | None:
        """The relay error a failure inside a step becomes (None: let it through)."""
        if isinstance(exc, _StepTimedOut):
            name = step() if callable(step) else step
            return self._transient(f"4.4.2 Timed out waiting for the reply to {name}", name)
        if isinstance(exc, TlsHandshakeFailed):
            return None
        if isinstance(exc, BadReply):
            name = step() if callable(step) else step
            return self._transient(f"4.5.0 Invalid reply to {name}: {exc.data!r}", name)
        if isinstance(exc, (SmtpError, OSError)):
            name = step() if callable(step) else step
            return self._transient(f"4.4.2 Connection lost during {name}: {exc}", name, _ConnectionDropped)
        return None

    def _arm(self, seconds: float) -> tuple[Any, _StepTimedOut, bool]:
        """Start a timer for ``seconds``: ``(timer, its exception, temporary)``.

        Each client keeps one libev timer per step length and re-arms it; a
        step nested in another of the same length gets a temporary one.
        """
        entry = self._timers.get(seconds)
        if entry is None:
            entry = self._timers[seconds] = (
                gevent.get_hub().loop.timer(seconds, seconds),
                _StepTimedOut(seconds),
            )
        timer: Any = entry[0]
        expired = entry[1]
        temporary = bool(timer.active)
        if temporary:
            timer, expired = gevent.get_hub().loop.timer(seconds, seconds), _StepTimedOut(seconds)
        # The timer throws into the greenlet that armed it, like a Timeout.
        timer.again(gevent.getcurrent().throw, expired, update=True)
        return timer, expired, temporary

    @staticmethod
    def _stale_guard(mail: Reply | None) -> _StaleGuard:
        """Turn a dropped connection before MAIL's reply into :class:`_StaleConnection`.

        A pooled connection the server had closed fails before the server
        answered MAIL (with PIPELINING, MAIL goes out with DATA or BDAT).
        """
        return _StaleGuard(mail)

    @staticmethod
    def _step_of(mail: Reply, rcpts: list[Reply], last: str) -> Callable[[], str]:
        def name() -> str:
            if not mail:
                return "MAIL"
            if not all(rcpts):
                return "RCPT"
            return last

        return name


class _StepTimedOut(BaseException):
    """Thrown into the delivering greenlet when a step's deadline passes.

    A BaseException, like :class:`gevent.Timeout`, so that no ``except
    Exception`` on the way can swallow it.
    """


class _Step:
    """The context of one exchange: its deadline, and its failures as relay errors."""

    __slots__ = ("_owner", "_seconds", "_step", "_timer")

    def __init__(self, owner: StepsMixin, step: str | Callable[[], str], seconds: float | None) -> None:
        self._owner = owner
        self._step = step
        self._seconds = seconds
        self._timer: tuple[Any, _StepTimedOut, bool] | None = None

    def __enter__(self) -> None:
        if self._seconds is not None:
            self._timer = self._owner._arm(self._seconds)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        timer = self._timer
        if timer is not None:
            if timer[2]:
                timer[0].close()
            else:
                timer[0].stop()
        if exc is None:
            return
        if isinstance(exc, _StepTimedOut):
            # The exception object is reused by the next step of this length.
            exc.__traceback__ = None
            if timer is None or exc is not timer[1]:
                return  # an outer step's deadline: let it through
        failure = self._owner._step_failure(self._step, exc)
        if failure is None:
            return
        raise failure from None


class _StaleGuard:
    __slots__ = ("_mail",)

    def __init__(self, mail: Reply | None) -> None:
        self._mail = mail

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, _ConnectionDropped) and not self._mail:
            raise _StaleConnection(exc.reply) from None
