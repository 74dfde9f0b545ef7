"""The root of slimta's exception tree.

Every exception the library raises on purpose derives from
:class:`SlimtaError`, so a mail server script can tell "slimta refused this"
apart from a bug with a single ``except SlimtaError``.
"""

from __future__ import annotations

__all__ = ["SlimtaError"]


class SlimtaError(Exception):
    """Base class of every error raised by slimta itself."""
