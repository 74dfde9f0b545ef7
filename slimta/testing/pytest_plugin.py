"""pytest fixtures for testing code built on slimta.

Installed with ``slimta[test]``, this plugin is loaded by pytest through
the ``pytest11`` entry point named ``slimta``; nothing needs importing.
Each fixture cleans up after the test:

* ``smtp_conversation``: a factory taking the arguments of
  :class:`~slimta.testing.SmtpConversation`; every conversation it made
  is closed at the end of the test.
* ``recording_relay``: a :class:`~slimta.testing.RecordingRelay`; the test
  fails if an attempt met a badly scripted outcome.
* ``recording_smtp_peer``: a :class:`~slimta.testing.RecordingSmtpPeer`,
  closed at the end of the test.
* ``queue_clock``: an installed :class:`~slimta.testing.QueueClock`.

Imports of slimta happen inside the fixtures, so loading the plugin costs
nothing for tests that do not use them.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from slimta.testing import QueueClock, RecordingRelay, RecordingSmtpPeer, SmtpConversation

__all__ = ["queue_clock", "recording_relay", "recording_smtp_peer", "smtp_conversation"]


@pytest.fixture
def smtp_conversation() -> Iterator[Callable[..., SmtpConversation]]:
    """A factory of :class:`~slimta.testing.SmtpConversation`, closed after the test."""
    from slimta.testing.conversation import SmtpConversation  # keep plugin loading cheap

    made: list[SmtpConversation] = []

    def factory(*args: Any, **kwargs: Any) -> SmtpConversation:
        conversation = SmtpConversation(*args, **kwargs)
        made.append(conversation)
        return conversation

    yield factory
    for conversation in made:
        conversation.close()


@pytest.fixture
def recording_relay() -> Iterator[RecordingRelay]:
    """A :class:`~slimta.testing.RecordingRelay`, checked for script errors after the test."""
    from slimta.testing.relay import RecordingRelay

    relay = RecordingRelay()
    yield relay
    relay.check()


@pytest.fixture
def recording_smtp_peer() -> Iterator[RecordingSmtpPeer]:
    """A :class:`~slimta.testing.RecordingSmtpPeer`, closed after the test."""
    from slimta.testing.peer import RecordingSmtpPeer

    with RecordingSmtpPeer() as peer:
        yield peer


@pytest.fixture
def queue_clock() -> Iterator[QueueClock]:
    """An installed :class:`~slimta.testing.QueueClock`, uninstalled after the test."""
    from slimta.testing.clock import QueueClock

    with QueueClock() as clock:
        yield clock
