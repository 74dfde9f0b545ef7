"""Fakes shared by the queue tests: relays, storages and a polling wait."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import gevent

from slimta.envelope import Envelope
from slimta.queue.dict import DictStorage
from slimta.relay import Relay


def make_envelope(
    sender: str = "sender@example.com", rcpts: list[str] | None = None, body: bytes = b"hi\r\n"
):
    env = Envelope(sender, rcpts if rcpts is not None else ["rcpt@example.com"])
    env.parse(b"Subject: test\r\nMessage-Id: <" + str(id(env)).encode() + b"@x>\r\n\r\n" + body)
    return env


def wait_until(cond, timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        gevent.sleep(0.002)


def meta(storage: DictStorage, id_: str) -> dict[str, Any]:
    """The metadata DictStorage keeps for ``id_`` as a dict ({} if gone)."""
    if id_ not in storage.meta_db:
        return {}
    timestamp, attempts, last_error = storage._meta(id_)
    return {"timestamp": timestamp, "attempts": attempts, "last_error": last_error}


class ScriptedRelay(Relay):
    """Returns (or raises) the next scripted item per attempt; records calls.

    A script item may be an exception instance (raised), the string "hang"
    (sleeps for ever), a callable taking the envelope, or any value returned
    as is.  When the script runs out, ``default`` is used.
    """

    def __init__(self, script: list[Any] | None = None, default: Any = None) -> None:
        super().__init__()
        self.script = list(script or [])
        self.default = default
        self.calls: list[tuple[list[str], int, float]] = []
        self.delivered: Counter[tuple[str, str]] = Counter()

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        self.calls.append((list(envelope.recipients), attempts, time.monotonic()))
        item = self.script.pop(0) if self.script else self.default
        if isinstance(item, BaseException):
            raise item
        if item == "hang":
            gevent.sleep(3600)
        if callable(item):
            item = item(envelope)
        if item is None:
            key = envelope.headers["Message-Id"] if envelope.headers else ""
            for rcpt in envelope.recipients:
                self.delivered[(key, rcpt)] += 1
        return item


class RecordingStorage(DictStorage):
    """DictStorage that logs every call and can be told to fail some."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ops: list[tuple[str, Any]] = []
        self.fail: dict[str, BaseException] = {}
        self.fail_once: dict[str, BaseException] = {}

    def _check(self, name: str, arg: Any) -> None:
        self.ops.append((name, arg))
        if name in self.fail_once:
            raise self.fail_once.pop(name)
        if name in self.fail:
            raise self.fail[name]

    def write(self, envelope, timestamp):
        self._check("write", envelope)
        return super().write(envelope, timestamp)

    def set_timestamp(self, id_, timestamp):
        self._check("set_timestamp", id_)
        return super().set_timestamp(id_, timestamp)

    def increment_attempts(self, id_):
        self._check("increment_attempts", id_)
        return super().increment_attempts(id_)

    def set_recipients_delivered(self, id_, rcpt_indexes):
        self._check("set_recipients_delivered", (id_, sorted(rcpt_indexes)))
        return super().set_recipients_delivered(id_, rcpt_indexes)

    def remove(self, id_):
        self._check("remove", id_)
        return super().remove(id_)
