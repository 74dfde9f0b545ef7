"""Wiring: the edge's validators, the queue with its policy, the relay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mailhub.policy import AliasPolicy
from slimta.queue import ExponentialBackoff, Queue, QueueStorage
from slimta.relay import Relay

__all__ = ["build_queue"]


def build_queue(storage: QueueStorage, relay: Relay, aliases: Mapping[str, Sequence[str]]) -> Queue:
    """The mailhub queue: aliases expanded before storing, retries every 10 minutes."""
    queue = Queue(storage, relay, backoff=ExponentialBackoff(initial=600, factor=1, lifetime=86400))
    queue.add_policy(AliasPolicy(aliases))
    return queue
