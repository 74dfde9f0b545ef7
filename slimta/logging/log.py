"""Compatibility module: the python-slimta location of :func:`logline`.

Scripts written for python-slimta import ``logline`` (and the ``log_repr``
object used to shorten long values) from here; both forward to
:mod:`slimta.logging`, where the line format is implemented.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import reprlib

from slimta.logging import logline

__all__ = ["log_repr", "logline"]

#: A :class:`reprlib.Repr` that shortens long strings and containers, for
#: callers that want compact values in their own log lines.
log_repr = reprlib.Repr()
log_repr.maxstring = 100
log_repr.maxother = 100
