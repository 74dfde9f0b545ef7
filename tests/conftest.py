"""Shared pytest set-up.

* Hub-blocking guard: when the suite runs with ``GEVENT_MONITOR_THREAD_ENABLE``
  (``dev.py test`` sets it, with ``GEVENT_MAX_BLOCKING_TIME=0.5``), gevent's
  monitor thread reports every time something holds the hub for longer than
  that.  Any such report during an integration test (or one marked
  ``hub_guard``) fails the test, so library code that blocks (a synchronous
  DNS query, a blocking TLS handshake, a long fsync on the hub) cannot slip
  in unnoticed.  Unit tests are sans-IO and CPU-bound by design: a long
  hypothesis run there holds the hub without starving anything, so they are
  not guarded.
* DNS stays on loopback: the default :class:`slimta.util.dns.DNSResolver` is
  pointed at a closed loopback port for the whole run, so no test can query
  the machine's own resolver (tests that need answers start a DNS server on
  loopback and point the resolver at it).
* ``require_tool``: tests that talk to a real external program (swaks,
  smtp-source, redis-server) skip when it is missing on a developer's machine
  but fail under CI, where ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

_blocked_reports: list[Any] = []


_main_hub: Any = None


def _on_gevent_event(event: Any) -> None:
    from gevent.events import EventLoopBlocked

    # Only the main thread's hub serves the tests' sessions; a hub that some
    # worker thread created has its own monitor, whose reports mean nothing
    # here (an idle worker's loop "blocks" by design).
    if isinstance(event, EventLoopBlocked) and (event.hub is None or event.hub is _main_hub):
        _blocked_reports.append(event)


def pytest_configure(config: pytest.Config) -> None:
    try:
        from gevent import events
    except ImportError:  # pragma: no cover
        return
    config.addinivalue_line("markers", "allow_hub_block: this test blocks the hub on purpose")
    from slimta.util.dns import DNSResolver

    # Port 9 (discard) on loopback has no listener: queries fail at once.
    DNSResolver.set_default(DNSResolver(servers=[("127.0.0.1", 9)], timeout=0.5, tries=1))
    config.addinivalue_line("markers", "hub_guard: fail this (unit) test if the gevent hub is blocked")
    global _main_hub
    import gevent

    _main_hub = gevent.get_hub()
    events.subscribers.append(_on_gevent_event)


_previous_test_guarded = True


@pytest.fixture(autouse=True)
def _fail_if_hub_blocked(request: pytest.FixtureRequest) -> Iterator[None]:
    global _previous_test_guarded
    guarded = bool("integration" in request.node.path.parts or request.node.get_closest_marker("hub_guard"))
    if guarded and not _previous_test_guarded:
        # An unguarded, CPU-bound test may have held the hub just before; the
        # monitor thread reports that up to one period later.  Let it, and
        # forget it, so it is not blamed on this test.
        import gevent

        gevent.sleep(float(os.environ.get("GEVENT_MAX_BLOCKING_TIME", "0.1")) + 0.1)
    _previous_test_guarded = guarded
    _blocked_reports.clear()
    yield
    if not guarded or request.node.get_closest_marker("allow_hub_block"):
        return
    if _blocked_reports:
        first = _blocked_reports[0]
        detail = "".join(first.info) if getattr(first, "info", None) else repr(first)
        pytest.fail(
            f"the gevent hub was blocked for more than {first.blocking_time}s "
            f"({len(_blocked_reports)} report(s)); first:\n{detail}"
        )


def require_tool(name: str) -> str:
    """Return the path of an external program, skipping (or failing in CI) without it."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (.ci/run installs it) but was not found")
        pytest.skip(f"{name} is not installed")
    return path
