"""Helpers for testing code built on slimta, with no network and no waiting.

People who build a mail server with slimta write their own validators,
policies, relays and storage backends; this package lets them test that
code against the real library, in-process:

* :class:`~slimta.testing.conversation.SmtpConversation`: an SMTP session
  with a real :class:`~slimta.edge.smtp.SmtpEdge` (your validators, AUTH,
  STARTTLS with a throw-away certificate) over an in-process socket pair;
* :class:`~slimta.testing.relay.RecordingRelay`: records delivery attempts
  and plays scripted outcomes, whole or per recipient;
* :class:`~slimta.testing.peer.RecordingSmtpPeer`: a real SMTP server
  object for your SMTP relays to deliver to, keeping the bytes it received;
* :class:`~slimta.testing.clock.QueueClock`: a clock for
  :class:`~slimta.queue.Queue` moved by ``advance(seconds)``, to test
  retries and back-off without waiting;
* :func:`~slimta.testing.envelope.make_envelope`: envelopes in one line;
* :mod:`slimta.testing.storage`: the conformance suite for your own
  :class:`~slimta.queue.QueueStorage` (it needs pytest, so it is not
  imported here);
* :mod:`slimta.testing.pytest_plugin`: the pytest fixtures
  ``smtp_conversation``, ``recording_relay``, ``recording_smtp_peer`` and
  ``queue_clock``, loaded automatically when ``slimta[test]`` is installed.

No helper opens a network port, and every call that waits does so for a
bounded time: misuse raises a :class:`HelperError` that says what went
wrong.  The library itself never imports this package.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from slimta.testing._errors import ConversationClosed, HelperError, HelperTimeout, ScriptError
from slimta.testing.clock import QueueClock
from slimta.testing.conversation import RecordingQueue, SmtpConversation
from slimta.testing.envelope import make_envelope
from slimta.testing.peer import PeerConnection, PeerMessage, RecordingSmtpPeer
from slimta.testing.relay import DELIVER, RecordingRelay, RelayAttempt

__all__ = [
    "DELIVER",
    "ConversationClosed",
    "HelperError",
    "HelperTimeout",
    "PeerConnection",
    "PeerMessage",
    "QueueClock",
    "RecordingQueue",
    "RecordingRelay",
    "RecordingSmtpPeer",
    "RelayAttempt",
    "ScriptError",
    "SmtpConversation",
    "make_envelope",
]
