"""Counters of a running node, served in the Prometheus text format.

.. versionadded:: 0.1.0

:class:`Metrics` is always there (the edges and relays call it); it only
records when the ``prometheus_client`` library is installed, and the
endpoint is served only when ``[process] metrics = "host:port"`` is set,
by gevent's WSGI server (no thread) with the library's WSGI app.

Series (all prefixed ``slimta_``):

==========================================  ===================================================
``sessions_total{edge}``                     sessions opened
``sessions_active{edge}``                    sessions open now
``messages_total{edge,result,reason}``       ``accepted`` / ``rejected`` (reason: reply code
                                             or ``relay_denied``, ``auth_required``...)
``deliveries_total{relay,result,reason}``    per recipient: ``delivered``, ``bounced``,
                                             ``deferred`` (reason: the reply code)
``delivery_seconds{relay}``                  histogram: reception to delivery
``queue_size{queue,state}``                  queued / deferred / active
``queue_oldest_seconds{queue}``              age of the oldest queued message
==========================================  ===================================================

The queue gauges are read at scrape time, at most every 10 s (listing a
disk queue reads every record).
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["Metrics"]

_QUEUE_CACHE_SECONDS = 10.0


class Metrics:
    """The node's counters; every method is a no-op without prometheus_client."""

    def __init__(self) -> None:
        try:
            self._prom: Any = importlib.import_module("prometheus_client")
        except ImportError:
            self._prom = None
        self.queues: dict[str, Any] = {}
        self._queue_cache: tuple[float, dict[str, list[Any]]] = (0.0, {})
        if self._prom is None:
            return
        prom = self._prom
        self.registry = prom.CollectorRegistry()
        reg = self.registry
        self._sessions = prom.Counter("slimta_sessions", "SMTP sessions opened", ["edge"], registry=reg)
        self._active = prom.Gauge("slimta_sessions_active", "SMTP sessions open", ["edge"], registry=reg)
        self._messages = prom.Counter(
            "slimta_messages", "Messages accepted or rejected", ["edge", "result", "reason"], registry=reg
        )
        self._deliveries = prom.Counter(
            "slimta_deliveries",
            "Delivery outcomes per recipient",
            ["relay", "result", "reason"],
            registry=reg,
        )
        self._latency = prom.Histogram(
            "slimta_delivery_seconds",
            "Seconds from reception to delivery",
            ["relay"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 86400),
            registry=reg,
        )
        reg.register(_QueueCollector(self))

    @property
    def enabled(self) -> bool:
        """Whether prometheus_client is installed."""
        return self._prom is not None

    def session_started(self, edge: str) -> None:
        """Count a new session."""
        if self._prom is not None:
            self._sessions.labels(edge).inc()
            self._active.labels(edge).inc()

    def session_ended(self, edge: str) -> None:
        """Count a session's end."""
        if self._prom is not None:
            self._active.labels(edge).dec()

    def message(self, edge: str, result: str, reason: str = "") -> None:
        """Count a message ``accepted`` or ``rejected`` (with a reason)."""
        if self._prom is not None:
            self._messages.labels(edge, result, reason).inc()

    def delivery(self, relay: str, result: str, reason: str, received: float | None) -> None:
        """Count one recipient's delivery attempt outcome."""
        if self._prom is None:
            return
        self._deliveries.labels(relay, result, reason).inc()
        if result == "delivered" and received:
            self._latency.labels(relay).observe(max(0.0, time.time() - received))

    def wsgi_app(self) -> Callable[..., Any]:
        """The WSGI application serving ``/metrics``."""
        app: Callable[..., Any] = self._prom.make_wsgi_app(registry=self.registry)
        return app

    def queue_entries(self) -> dict[str, list[Any]]:
        """``{queue name: [(QueueEntry, reception time)]}``, cached for a few seconds."""
        when, cached = self._queue_cache
        if time.monotonic() - when < _QUEUE_CACHE_SECONDS:
            return cached
        fresh: dict[str, list[Any]] = {}
        for name, queue in self.queues.items():
            fresh[name] = [(entry, _received(queue, entry.id)) for entry in queue.inspect()]
        self._queue_cache = (time.monotonic(), fresh)
        return fresh


def _received(queue: Any, id_: str) -> float | None:
    # QueueEntry has no reception time; the stored envelope does.
    try:
        envelope, _ = queue.store.get(id_)
    except KeyError:
        return None
    timestamp = getattr(envelope, "timestamp", None)
    return float(timestamp) if timestamp else None


class _QueueCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        core = importlib.import_module("prometheus_client.core")
        size = core.GaugeMetricFamily("slimta_queue_size", "Queued messages", labels=["queue", "state"])
        oldest = core.GaugeMetricFamily(
            "slimta_queue_oldest_seconds", "Age of the oldest queued message", labels=["queue"]
        )
        now = time.time()
        for name, entries in self.metrics.queue_entries().items():
            for state in ("queued", "deferred", "active"):
                size.add_metric([name, state], sum(1 for e, _ in entries if e.state == state))
            received = [when for _, when in entries if when]
            oldest.add_metric([name], now - min(received) if received else 0.0)
        yield size
        yield oldest
