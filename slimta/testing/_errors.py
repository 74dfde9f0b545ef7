"""The errors raised by the testing helpers when they are misused or time out."""

from __future__ import annotations

from slimta.core import SlimtaError

__all__ = ["ConversationClosed", "HelperError", "HelperTimeout", "ScriptError"]


class HelperError(SlimtaError):
    """Base class of the errors raised by :mod:`slimta.testing` helpers.

    .. versionadded:: 0.1.0
    """


class HelperTimeout(HelperError):
    """A helper call did not finish within its timeout.

    Every helper that waits does so for a bounded time, so a test that
    expects something that never happens fails with this error (saying
    what it waited for) instead of hanging.
    """


class ConversationClosed(HelperError):
    """A command was sent on an SMTP conversation that has ended.

    The conversation ends when the test calls ``quit()`` or ``close()``, or
    when the server closes the connection (after a ``221`` or ``421``
    reply, a timeout or an error in a validator).
    """


class ScriptError(HelperError, ValueError):
    """An outcome scripted for a recording helper cannot be used.

    Raised for a value that is not a valid outcome, or for an outcome
    scripted for a recipient the envelope does not have.
    """
