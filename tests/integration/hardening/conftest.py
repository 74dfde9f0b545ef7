"""Fixtures of the hardening tests: the edge fixtures, plus helpers.

``edge_factory``, ``raw_client`` and the TLS fixtures come from
``tests/integration/edge/conftest.py``; ``redis_server`` from the storage
tests.  :func:`raise_nofile` lifts RLIMIT_NOFILE (or skips the test).
"""

from __future__ import annotations

import resource
import socket
from typing import Any

import pytest

from tests.integration.edge.conftest import (  # noqa: F401 - fixtures
    RawClient,
    RecordingQueue,
    ca,
    client_context,
    edge,
    edge_factory,
    gevent_server_context,
    raw_client,
    server_cert,
    stdlib_server_context,
    tls_hostname,
)
from tests.integration.storage.redis_server import redis_server  # noqa: F401 - fixture


def raise_nofile(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to at least ``needed`` or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class SourceClient(RawClient):
    """A :class:`RawClient` bound to a chosen source address (127.0.0.2...)."""

    def __init__(self, address: tuple[str, int], source: str, timeout: float = 5.0) -> None:
        self.sock: Any = socket.create_connection(address, timeout=timeout, source_address=(source, 0))
        self.sock.settimeout(timeout)
        self.buf = b""
        self.recv_calls = 0
