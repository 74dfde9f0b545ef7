"""Our storage backend passes the same conformance suite as slimta's own."""

from __future__ import annotations

from mailhub.storage import MemoryStorage

from slimta.testing.storage import StorageConformance


class TestMemoryStorage(StorageConformance):
    """Every StorageConformance test, run against MemoryStorage."""

    def make_storage(self):
        """A fresh, empty backend for each test."""
        return MemoryStorage()
