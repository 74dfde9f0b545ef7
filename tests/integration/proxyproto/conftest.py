"""Fixtures for the PROXY protocol tests: ``edge_factory(mixin, **mixin_kwargs)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._support import EdgeUnderTest


@pytest.fixture
def edge_factory() -> Iterator[Callable[..., EdgeUnderTest]]:
    made: list[EdgeUnderTest] = []

    def make(mixin: Any, **mixin_kwargs: Any) -> EdgeUnderTest:
        edge = EdgeUnderTest(mixin, **mixin_kwargs)
        made.append(edge)
        return edge

    yield make
    for edge in made:
        edge.edge.kill(block=True, timeout=2)
