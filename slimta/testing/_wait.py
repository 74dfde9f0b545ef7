"""Bounded waiting shared by the helpers."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from gevent.event import Event

__all__ = ["wait_until"]


def wait_until(condition: Callable[[], bool], changed: Event, timeout: float) -> bool:
    """Wait until ``condition()`` holds, re-checking whenever ``changed`` is set.

    Returns:
        Whether it holds; False once ``timeout`` real seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        changed.clear()
        changed.wait(remaining)
    return True
