"""Throw-away TLS certificates for the testing helpers, made with trustme."""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

from slimta.testing._errors import HelperError

__all__ = ["client_context", "server_context"]

_NO_TRUSTME = (
    "TLS in slimta.testing needs a throw-away certificate, made with the 'trustme' "
    "package, which is not installed: install slimta[test] (or trustme), or pass "
    "your own context= and client_context="
)


@lru_cache(maxsize=1)
def _ca() -> Any:
    # One CA per process: making keys costs CPU, and a test run opens many
    # TLS conversations.
    try:
        import trustme  # optional, only needed for TLS
    except ImportError:
        raise HelperError(_NO_TRUSTME) from None
    return trustme.CA()


@lru_cache(maxsize=16)
def _issued(hostname: str) -> Any:
    return _ca().issue_cert(hostname)


def server_context(hostname: str) -> ssl.SSLContext:
    """A server context presenting a certificate for ``hostname``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _issued(hostname).configure_cert(context)
    return context


def client_context() -> ssl.SSLContext:
    """A client context that trusts (only) the throw-away CA."""
    context = ssl.create_default_context()
    _ca().configure_trust(context)
    return context
