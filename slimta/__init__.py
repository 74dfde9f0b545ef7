"""slimta: build mail transfer agents in Python, on gevent.

The package re-exports nothing; import what you need from its modules
(``slimta.edge.smtp``, ``slimta.queue``, ``slimta.relay.smtp.mx``, ...), whose
paths and names follow the python-slimta 4.0 API.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__: str = version("slimta")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"
