"""Consistent, machine-readable logging for slimta.

Every structured slimta log message is a single line of the form::

    type:id:operation key=value key=value ...

for example ``fd:7:connect peer=('192.0.2.1', 25)`` or
``queue:1a2b3c:remove``.  Values are Python literals, so :func:`parseline`
gives back exactly what :func:`logline` was given.  The line is handed to an
ordinary :mod:`logging` logger, so the usual handlers, filters and formatters
apply.

The per-subsystem loggers -- :func:`getSocketLogger`,
:func:`getSubprocessLogger`, :func:`getQueueStorageLogger` and
:func:`getHttpLogger` -- wrap :func:`logging.getLogger` and offer one method
per event, which keeps free-form text out of these logs.  They log at
``DEBUG`` (socket errors at
:data:`slimta.logging.socket.socket_error_log_level`) and cost next to
nothing while that level is disabled.

Secrets never reach these logs: SMTP AUTH exchanges seen by a socket logger
are redacted (see :class:`~slimta.logging.socket.SocketLogger`), and HTTP
``Authorization`` and cookie headers are replaced by ``<redacted>``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

from slimta.logging._format import LogLineError, format_line, is_enabled, parse_line
from slimta.logging.http import HttpLogger
from slimta.logging.queuestorage import QueueStorageLogger
from slimta.logging.socket import SocketLogger
from slimta.logging.subprocess import SubprocessLogger

__all__ = [
    "LogLineError",
    "getHttpLogger",
    "getQueueStorageLogger",
    "getSocketLogger",
    "getSubprocessLogger",
    "log_exception",
    "logline",
    "parseline",
]


def getSocketLogger(name: str) -> SocketLogger:  # noqa: N802 - 4.0 name
    """Return a :class:`~slimta.logging.socket.SocketLogger` for a logger.

    Args:
        name: The name given to :func:`logging.getLogger`.
    """
    return SocketLogger(logging.getLogger(name))


def getSubprocessLogger(name: str) -> SubprocessLogger:  # noqa: N802 - 4.0 name
    """Return a :class:`~slimta.logging.subprocess.SubprocessLogger` for a logger.

    Args:
        name: The name given to :func:`logging.getLogger`.
    """
    return SubprocessLogger(logging.getLogger(name))


def getQueueStorageLogger(name: str) -> QueueStorageLogger:  # noqa: N802 - 4.0 name
    """Return a :class:`~slimta.logging.queuestorage.QueueStorageLogger` for a logger.

    Args:
        name: The name given to :func:`logging.getLogger`.
    """
    return QueueStorageLogger(logging.getLogger(name))


def getHttpLogger(name: str) -> HttpLogger:  # noqa: N802 - 4.0 name
    """Return a :class:`~slimta.logging.http.HttpLogger` for a logger.

    Args:
        name: The name given to :func:`logging.getLogger`.
    """
    return HttpLogger(logging.getLogger(name))


def logline(
    log: Callable[[str], object],
    type: object,  # noqa: A002 - 4.0 argument name
    typeid: object,
    operation: object,
    **data: Any,
) -> None:
    """Write one ``type:id:operation key=value ...`` line through ``log``.

    Values are written as Python literals (``repr()``) and keys in sorted
    order.  ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None`` and
    tuples, lists and dicts of them read back unchanged through
    :func:`parseline`; any other value is written as the string of its
    ``repr()``, so the line still parses.

    When ``log`` is a level method of a :class:`logging.Logger` (such as
    ``logger.debug``) and that level is disabled, nothing is formatted.

    Args:
        log: Called with the finished line, e.g. ``logger.debug``.
        type: What kind of thing the line is about, e.g. ``'fd'``.
        typeid: Which one of those, e.g. a file descriptor.
        operation: What happened, e.g. ``'connect'``.
        **data: The ``key=value`` items.

    Raises:
        LogLineError: ``type`` or ``typeid`` is empty or contains ``:`` or
            whitespace, ``operation`` is empty or contains whitespace, or a
            key contains ``=`` or whitespace.
    """
    if is_enabled(log):
        log(format_line(type, typeid, operation, data))


def parseline(line: str) -> tuple[str, str, str, dict[str, Any]]:
    """Split a line written by :func:`logline` into its parts.

    No part of the line is ever evaluated: values are read by a parser that
    accepts literals only.

    Args:
        line: The log message, with or without its line ending.

    Returns:
        ``(type, id, operation, data)``: the first three as strings, ``data``
        a dict of the ``key=value`` items with their values restored.

    Raises:
        LogLineError: The line is malformed; the message says where.  It is
            also a :class:`ValueError`.
    """
    return parse_line(line)


def log_exception(name: str, **kwargs: Any) -> None:
    """Log the exception being handled, with its traceback, as one line.

    The line is ``exception:<ExceptionType>:unhandled`` with the keys
    ``message``, ``args`` and ``traceback`` plus any ``kwargs``, logged at
    ``ERROR``.  The traceback travels in the line itself (not as
    ``exc_info``), so it appears exactly once and the line still parses.
    Called outside an ``except`` block it does nothing.

    This is a module attribute on purpose: assign your own function to
    ``slimta.logging.log_exception`` to send unexpected errors elsewhere
    (an error tracker, say).  slimta looks the attribute up at call time, so
    the replacement takes effect everywhere at once.

    Args:
        name: The name given to :func:`logging.getLogger`.
        **kwargs: Extra ``key=value`` items for the line.
    """
    exc_type, exc, tb = sys.exc_info()
    if exc_type is None or exc is None:
        return
    logger = logging.getLogger(name)
    if not logger.isEnabledFor(logging.ERROR):
        return
    data = dict(kwargs)
    data["message"] = str(exc)
    data["args"] = exc.args
    data["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))
    logger.error(format_line("exception", exc_type.__name__, "unhandled", data))
