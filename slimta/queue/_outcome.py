"""Turning whatever a relay returned or raised into per-recipient outcomes.

A relay may return ``None`` or a :class:`~slimta.smtp.reply.Reply` for the
whole envelope, a mapping ``recipient -> result`` or a sequence of results
in recipient order, or raise a :class:`~slimta.relay.RelayError`.  Anything
else is a bug in the relay; the queue must neither lose the message nor
crash on it, so every value it cannot make sense of counts as a temporary
failure and the recipient is retried.  Recipients are identified by their
index in the envelope as it was attempted, which is what
:meth:`~slimta.queue.QueueStorage.set_recipients_delivered` expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from slimta.relay import PermanentRelayError, RelayError
from slimta.smtp.reply import Reply

__all__ = ["Outcomes", "classify", "group_by_reply", "transient_reply"]


def transient_reply(text: str) -> Reply:
    """A ``450 4.0.0`` reply for failures that have no reply of their own."""
    return Reply("450", f"4.0.0 {text}")


_INVALID = "Relay returned an invalid result"
_MISSING = "Relay returned no result for this recipient"


@dataclass(slots=True)
class Outcomes:
    """Recipient indexes sorted by outcome, failures with their replies."""

    delivered: list[int] = field(default_factory=list)
    permanent: list[tuple[int, Reply]] = field(default_factory=list)
    transient: list[tuple[int, Reply]] = field(default_factory=list)

    def add(self, index: int, value: object) -> None:
        kind, reply = _classify_one(value)
        if kind == "delivered":
            self.delivered.append(index)
        elif kind == "permanent":
            self.permanent.append((index, reply))
        else:
            self.transient.append((index, reply))


def _error_reply(error: RelayError) -> Reply:
    reply = getattr(error, "reply", None)
    if isinstance(reply, Reply) and reply.code:
        return reply
    code, esc = ("550", "5.0.0") if isinstance(error, PermanentRelayError) else ("450", "4.0.0")
    return Reply(code, f"{esc} {error}")


def _classify_one(value: object) -> tuple[str, Reply]:
    if value is None:
        return "delivered", Reply("250", "2.0.0 Delivered")
    if isinstance(value, PermanentRelayError):
        return "permanent", _error_reply(value)
    if isinstance(value, RelayError):
        # A bare RelayError is neither kind; retrying is the safe choice.
        return "transient", _error_reply(value)
    if isinstance(value, Reply):
        first = (value.code or "")[:1]
        if first == "2":
            return "delivered", value
        if first == "5":
            return "permanent", value
        if first == "4":
            return "transient", value
    return "transient", transient_reply(_INVALID)


def classify(result: object, recipients: Sequence[str]) -> Outcomes:
    """Sort the recipients of one attempt by the relay's ``result``.

    Args:
        result: What the relay returned, or the :class:`RelayError` it raised.
        recipients: The envelope's recipients as attempted.

    Returns:
        The outcome of every recipient index.
    """
    outcomes = Outcomes()
    if isinstance(result, Mapping):
        for index, rcpt in enumerate(recipients):
            if rcpt in result:
                outcomes.add(index, result[rcpt])
            else:
                outcomes.transient.append((index, transient_reply(_MISSING)))
    elif isinstance(result, Sequence) and not isinstance(result, str | bytes):
        for index in range(len(recipients)):
            if index < len(result):
                outcomes.add(index, result[index])
            else:
                outcomes.transient.append((index, transient_reply(_MISSING)))
    else:
        for index in range(len(recipients)):
            outcomes.add(index, result)
    return outcomes


def group_by_reply(failures: Sequence[tuple[int, Reply]]) -> list[tuple[Reply, list[int]]]:
    """Group failed recipient indexes by identical reply (code and text).

    One bounce is sent per group, in order of first appearance.
    """
    groups: dict[tuple[str | None, str | None], tuple[Reply, list[int]]] = {}
    for index, reply in failures:
        key = (reply.code, reply.message)
        if key in groups:
            groups[key][1].append(index)
        else:
            groups[key] = (reply, [index])
    return list(groups.values())
