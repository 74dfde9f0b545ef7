"""A relay for tests that records every attempt and plays scripted outcomes.

:class:`RecordingRelay` stands in for the next hop behind a
:class:`~slimta.queue.Queue` (or is called directly).  Each delivery
attempt is recorded as a :class:`RelayAttempt`, and its outcome is the next
one scripted with :meth:`RecordingRelay.script`, for the whole envelope or
per recipient::

    relay = RecordingRelay()
    relay.script(
        TransientRelayError("try later"),                       # 1st attempt
        {"a@example.com": DELIVER,                               # 2nd attempt
         "b@example.com": PermanentRelayError("no such user")},
    )

When the script runs out, attempts get :attr:`RecordingRelay.default`
(delivered, unless changed).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from gevent.event import Event

from slimta.relay import Relay, RelayError
from slimta.smtp.reply import Reply
from slimta.testing._errors import HelperTimeout, ScriptError
from slimta.testing._wait import wait_until

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["DELIVER", "RecordingRelay", "RelayAttempt"]

#: The outcome "delivered" (``None`` means the same).
DELIVER: Final = "deliver"

#: What one recipient's (or a whole attempt's) outcome may be: DELIVER or
#: None, a :class:`~slimta.smtp.reply.Reply` (its code decides), or a
#: :class:`~slimta.relay.RelayError` instance.
Outcome = str | Reply | RelayError | None


@dataclass(frozen=True)
class RelayAttempt:
    """One recorded delivery attempt.

    Attributes:
        envelope: The envelope object the relay was given.
        sender: Its sender at the time of the attempt.
        recipients: Its recipients at the time of the attempt.
        attempts: How many attempts came before (the queue's count).
        outcome: What was scripted for it (after defaults were filled in):
            one outcome, or a ``{recipient: outcome}`` dict.
    """

    envelope: Envelope
    sender: str | None
    recipients: tuple[str, ...]
    attempts: int
    outcome: Any


def _check_outcome(value: object, where: str) -> None:
    if value is None or value == DELIVER or isinstance(value, Reply | RelayError):
        return
    raise ScriptError(
        f"{where}: {value!r} is not an outcome; use DELIVER (or None), a Reply, "
        "a TransientRelayError or PermanentRelayError instance, or a dict of those per recipient"
    )


class RecordingRelay(Relay):
    """Record delivery attempts; answer each with the next scripted outcome.

    Args:
        default: The outcome of attempts beyond the script (DELIVER).

    Attributes:
        attempts: Every :class:`RelayAttempt`, in order.
        errors: :class:`~slimta.testing.ScriptError` raised during attempts
            (a queue would only log them); :meth:`check` raises the first.
    """

    def __init__(self, default: Outcome = DELIVER) -> None:
        super().__init__()
        _check_outcome(default, "default")
        self.default: Outcome = default
        self.attempts: list[RelayAttempt] = []
        self.errors: list[ScriptError] = []
        self._script: list[Any] = []
        self._changed = Event()

    def script(self, *outcomes: Outcome | Mapping[str, Outcome]) -> None:
        """Append outcomes for the next attempts, one per attempt.

        Each is an outcome for the whole envelope, or a mapping from
        recipient to outcome.  Recipients the mapping leaves out get
        :attr:`default`; a recipient it names that the attempted envelope
        does not have is an error (:class:`~slimta.testing.ScriptError`).

        Raises:
            ScriptError: An outcome is not one of the accepted kinds.
        """
        for number, outcome in enumerate(outcomes, len(self._script) + 1):
            if isinstance(outcome, Mapping):
                for rcpt, value in outcome.items():
                    _check_outcome(value, f"scripted attempt {number}, recipient {rcpt!r}")
                self._script.append(dict(outcome))
            else:
                _check_outcome(outcome, f"scripted attempt {number}")
                self._script.append(outcome)

    @property
    def pending(self) -> int:
        """How many scripted outcomes no attempt has used yet."""
        return len(self._script)

    @property
    def envelopes(self) -> list[Envelope]:
        """The envelope of every attempt, in order."""
        return [attempt.envelope for attempt in self.attempts]

    @property
    def delivered(self) -> list[str]:
        """Every recipient an attempt delivered to, in order."""
        done: list[str] = []
        for attempt in self.attempts:
            for rcpt in attempt.recipients:
                outcome = attempt.outcome.get(rcpt) if isinstance(attempt.outcome, dict) else attempt.outcome
                if _delivers(outcome):
                    done.append(rcpt)
        return done

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        """Record the attempt and carry out the next scripted outcome.

        Raises:
            RelayError: The outcome scripted for the whole envelope.
            ScriptError: The outcome names a recipient ``envelope`` lacks.
        """
        outcome = self._script.pop(0) if self._script else self.default
        recipients = tuple(envelope.recipients)
        if isinstance(outcome, dict):
            unknown = [rcpt for rcpt in outcome if rcpt not in recipients]
            if unknown:
                error = ScriptError(
                    f"an outcome was scripted for recipient(s) {unknown!r}, but the envelope "
                    f"attempted (attempt {len(self.attempts) + 1}) has recipients {list(recipients)!r}"
                )
                self.errors.append(error)
                self._record(envelope, recipients, attempts, outcome)
                raise error
            outcome = {rcpt: outcome.get(rcpt, self.default) for rcpt in recipients}
        self._record(envelope, recipients, attempts, outcome)
        if isinstance(outcome, dict):
            return {rcpt: _result(value) for rcpt, value in outcome.items()}
        if isinstance(outcome, RelayError):
            raise outcome
        return _result(outcome)

    def _record(self, envelope: Envelope, recipients: tuple[str, ...], attempts: int, outcome: Any) -> None:
        self.attempts.append(RelayAttempt(envelope, envelope.sender, recipients, attempts, outcome))
        self._changed.set()

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[RelayAttempt]:
        """Wait until at least ``count`` attempts were made in all.

        Returns:
            :attr:`attempts`.

        Raises:
            HelperTimeout: Fewer attempts came within ``timeout`` seconds.
            ScriptError: An attempt failed on a badly scripted outcome.
        """
        arrived = wait_until(lambda: len(self.attempts) >= count, self._changed, timeout)
        self.check()
        if not arrived:
            raise HelperTimeout(
                f"waited {timeout} s for {count} delivery attempt(s), got {len(self.attempts)} "
                "(is the queue started, and its retry due? see slimta.testing.QueueClock)"
            )
        return self.attempts

    def check(self) -> None:
        """Raise the first :class:`~slimta.testing.ScriptError` met during an attempt."""
        if self.errors:
            raise self.errors[0]


def _delivers(outcome: Any) -> bool:
    if outcome is None or outcome == DELIVER:
        return True
    return isinstance(outcome, Reply) and (outcome.code or "").startswith("2")


def _result(outcome: Any) -> Any:
    # The queue reads None as delivered; a Reply or RelayError per recipient
    # is passed through as the relay API allows.
    return None if outcome == DELIVER else outcome
